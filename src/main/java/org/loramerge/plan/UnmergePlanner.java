package org.loramerge.plan;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.WeightFormats;

import static org.loramerge.plan.UnmergeException.Reason.BASE_MISMATCH;
import static org.loramerge.plan.UnmergeException.Reason.CANNOT_UNDO;
import static org.loramerge.plan.UnmergeException.Reason.QUANTIZED;

/**
 * Plans {@code unmerge}: W = W' − s·B·A for every weight the adapter changed by low-rank terms,
 * rounded once, which is a merge of the adapter with every term negated ({@link TermSpec#negated})
 * planned by {@link Planner} on the merged model, so the adapter is checked against the merged
 * model exactly as a merge checks it against a base, and the merge engines compute it.
 *
 * <p>What the merged model alone cannot give back (docs/FORMATS.md §11), refused unless the original
 * base is given, whose tensors are then taken as they are:
 * <ul>
 *   <li>DoRA: W' = m·(W + ΔW)/‖W + ΔW‖ keeps the direction of W + ΔW but divides out its norm, so
 *       W = t·W'/m − ΔW for every t > 0 fits W' equally well: the norm is lost;</li>
 *   <li>tensors the adapter replaced (modules_to_save, trained biases) and token rows (trainable
 *       tokens): the merge overwrote the original values. A {@code base_layer.weight} is the
 *       exception: PEFT saves the frozen weight of a targeted embedding or head, which is the
 *       original, and it is written as it is;</li>
 *   <li>LoRA on the output head of a tied model: PEFT adds the head's delta to the shared
 *       embedding (and with ensure_weight_tying twice), loramerge unties the head or applies an
 *       identical delta once, so what to subtract depends on the tool that merged.</li>
 * </ul>
 */
public final class UnmergePlanner {
    private UnmergePlanner() {
    }

    /**
     * The unmerge of {@code adapter} out of {@code merged}; with {@code base} (may be null) the
     * output has the base's tensors, dtypes and config, and what cannot be undone comes from it.
     */
    public static MergePlan plan(Checkpoint merged, LoraAdapter adapter, Checkpoint base, PlanOptions options)
            throws AdapterException, UnmergeException, UsageException, QuantException, SafetensorsException, IOException {
        QuantizedModel q = WeightFormats.detect(merged);
        if (q.isQuantized()) {
            throw new UnmergeException(QUANTIZED, merged.dir() + " has " + q.weights().size() + " quantized (" + q.formatName() + ") weights: "
                    + "requantizing the merge rounded part of the adapter's change away, so subtracting it cannot give the base back; "
                    + "use the 16-bit merged model, or the original base");
        }
        MergePlan forward = Planner.plan(merged, adapter, PlanOptions.defaults());
        Map<String, String> refused = new LinkedHashMap<>();
        Map<String, TensorSource> fromAdapter = new LinkedHashMap<>();
        for (OutputTensor t : forward.tensors()) {
            if (t.kind() == OutputTensor.Kind.REPLACE && t.source().info().name().endsWith(".base_layer.weight")) {
                // PEFT saved the frozen base weight of a targeted embedding or head: the original itself
                fromAdapter.put(t.name(), t.source());
            } else if (t.dora() != null) {
                refused.put(t.name(), "DoRA divides W + ΔW by its norm, which the merged model does not keep");
            } else if (t.tokenRows() != null) {
                refused.put(t.name(), "trainable tokens overwrote rows of it");
            } else if (t.kind() == OutputTensor.Kind.REPLACE) {
                refused.put(t.name(), "the adapter replaced it (modules_to_save, base_layer or bias) and the merge overwrote the original");
            }
        }
        String head = LoadedNames.of(merged).stored("lm_head.weight");
        boolean tied = merged.tensor(head) == null;
        for (AdapterKey k : adapter.keys().values()) {
            boolean headTerm = k.kind() != AdapterKey.Kind.REPLACE && k.kind() != AdapterKey.Kind.MODULES_TO_SAVE
                    && k.kind() != AdapterKey.Kind.ORIGINAL_MODULE && (k.module().equals("lm_head") || k.module().endsWith(".lm_head"));
            if (tied && headTerm) {
                String embed = Planner.findEmbedding(merged);
                fromAdapter.remove(embed);
                fromAdapter.remove(head);
                refused.putIfAbsent(embed == null ? k.module() : embed, "tied embeddings: the adapter has LoRA on lm_head, whose delta a merge adds "
                        + "to the shared embedding once (loramerge) or twice (PEFT with ensure_weight_tying), or unties");
            }
        }
        if (base == null) {
            if (!refused.isEmpty()) {
                List<String> lines = new ArrayList<>();
                refused.forEach((n, why) -> lines.add(n + ": " + why));
                throw new UnmergeException(CANNOT_UNDO, "cannot undo the merge of " + adapter.dir() + " from " + merged.dir()
                        + " alone; nothing was written:\n  - " + String.join("\n  - ", lines)
                        + "\npass the original base with --base to take these tensors from it");
            }
            List<OutputTensor> outputs = new ArrayList<>();
            for (OutputTensor t : forward.tensors()) {
                outputs.add(inverse(t, options.dtype() != null && t.dtype().isMergeable() ? options.dtype() : t.dtype(), fromAdapter.get(t.name())));
            }
            return new MergePlan(outputs, Planner.assignShards(outputs, options.maxShardSize()), merged.config() == null ? null
                    : withDtype(merged, options.dtype()), forward.filesToCopy(), forward.keyUse(), forward.warnings(), notes(forward, false, fromAdapter), null);
        }
        return withBase(forward, refused, fromAdapter, merged, base, options);
    }

    /**
     * The unmerge of one output of the forward plan, rounded to {@code dtype}: the original weight
     * the adapter carries when it has one ({@code original}, else null), or the merged tensor with
     * the terms negated.
     */
    private static OutputTensor inverse(OutputTensor t, DType dtype, TensorSource original) {
        if (original != null) {
            return dtype == original.dtype() ? OutputTensor.copy(t.name(), original) : OutputTensor.convert(t.name(), dtype, original);
        }
        if (t.terms().isEmpty()) {
            return dtype == t.source().dtype() ? OutputTensor.copy(t.name(), t.source()) : OutputTensor.convert(t.name(), dtype, t.source());
        }
        List<TermSpec> negated = new ArrayList<>();
        t.terms().forEach(x -> negated.add(x.negated()));
        return OutputTensor.merge(t.name(), dtype, t.source(), new OutputTensor.Update(negated, null, null));
    }

    private static MergePlan withBase(MergePlan forward, Map<String, String> refused, Map<String, TensorSource> fromAdapter, Checkpoint merged,
                                      Checkpoint base, PlanOptions options)
            throws UnmergeException, IOException {
        Map<String, OutputTensor> byName = new LinkedHashMap<>();
        forward.tensors().forEach(t -> byName.put(t.name(), t));
        List<String> problems = new ArrayList<>();
        List<OutputTensor> outputs = new ArrayList<>();
        int fromBase = 0;
        for (TensorInfo b : base.tensors().values()) {
            TensorSource baseSource = new TensorSource(base.fileOf(b.name()), b);
            DType dtype = options.dtype() != null && b.dtype().isMergeable() ? options.dtype() : b.dtype();
            OutputTensor f = byName.get(b.name());
            if (f == null || refused.containsKey(b.name())) {
                outputs.add(dtype == b.dtype() ? OutputTensor.copy(b.name(), baseSource) : OutputTensor.convert(b.name(), dtype, baseSource));
                fromBase++;
                continue;
            }
            TensorSource original = fromAdapter.get(b.name());
            long[] shape = original != null ? original.info().shape() : f.shape();
            DType kind = original != null ? original.dtype() : f.source().dtype();
            if (!Arrays.equals(shape, b.shape()) || kind.isMergeable() != b.dtype().isMergeable()) {
                problems.add(b.name() + " is " + kind + " " + TensorInfo.shapeString(shape) + " in the merged model but " + b.dtype()
                        + " " + TensorInfo.shapeString(b.shape()) + " in the base");
                continue;
            }
            outputs.add(inverse(f, dtype, original));
        }
        if (!problems.isEmpty()) {
            throw new UnmergeException(BASE_MISMATCH, "--base " + base.dir() + " is not the base of " + merged.dir() + "; nothing was written:\n  - "
                    + String.join("\n  - ", problems) + "\npass the model the adapter was merged into");
        }
        List<String> notes = notes(forward, true, fromAdapter);
        if (fromBase > 0) {
            notes.add(fromBase + " tensors taken from the base as they are (" + (refused.isEmpty() ? "not in the merged model"
                    : String.join(", ", refused.keySet()) + ": cannot be undone") + ")");
        }
        for (String n : byName.keySet()) {
            if (base.tensor(n) == null) {
                notes.add(n + " is in the merged model but not in the base; left out, as the base has it");
            }
        }
        return new MergePlan(outputs, Planner.assignShards(outputs, options.maxShardSize()), base.config() == null ? null : base.config().deepCopy(),
                base.nonWeightFiles(), forward.keyUse(), forward.warnings(), notes, null);
    }

    private static ObjectNode withDtype(Checkpoint merged, DType dtype) {
        ObjectNode c = merged.config().deepCopy();
        if (dtype != null) {
            if (c.has("dtype")) {
                c.put("dtype", dtype.torchName());
            }
            if (c.has("torch_dtype") || !c.has("dtype")) {
                c.put("torch_dtype", dtype.torchName());
            }
        }
        return c;
    }

    private static List<String> notes(MergePlan forward, boolean withBase, Map<String, TensorSource> fromAdapter) {
        List<String> notes = new ArrayList<>();
        long subtracted = forward.tensors().stream().filter(t -> !t.terms().isEmpty() && !fromAdapter.containsKey(t.name())).count();
        notes.add(subtracted + " tensors unmerged: W = W' − s·B·A, computed exactly and rounded once" + (withBase ? "" : " (config.json as merged)"));
        if (!fromAdapter.isEmpty()) {
            notes.add(String.join(", ", fromAdapter.keySet()) + ": the adapter holds the original weight (PEFT saves the frozen base layer of a "
                    + "targeted embedding or head), which is written as it is");
        }
        return notes;
    }
}
