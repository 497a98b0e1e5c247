package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.WeightFormats;

import static org.loramerge.plan.ExtractException.Reason.ARCHITECTURE;
import static org.loramerge.plan.ExtractException.Reason.DTYPE;
import static org.loramerge.plan.ExtractException.Reason.QUANTIZED;
import static org.loramerge.plan.ExtractException.Reason.SHAPE;
import static org.loramerge.plan.ExtractException.Reason.TENSOR_SETS;

/**
 * Plans {@code extract} from the headers and configs of a base model and a fine-tuned copy of it:
 * checks that they are the same architecture with the same tensors and shapes, and decides which
 * weights get low-rank factors (docs/FORMATS.md §11). Any mismatch stops here, before anything is
 * read or written.
 *
 * <p>Targets: with all-linear, every 2-D floating-point {@code .weight} except embeddings (a last
 * name segment containing "embed", or GPT-2's wte/wpe) and the output head ({@code lm_head},
 * GPT-NeoX's {@code embed_out}), which is what PEFT's "all-linear" wraps in a transformers model
 * (peft tuners_utils.py {@code _maybe_include_all_linear_layers}: nn.Linear and Conv1D, the output
 * embedding left out). {@code --embeddings} adds the input embedding (as a LoRA embedding) and the
 * output head. Named targets match as a PEFT target_modules list does.
 */
public final class ExtractPlanner {
    private static final Set<String> OUTPUT_HEADS = Set.of("lm_head", "embed_out");

    private ExtractPlanner() {
    }

    public static ExtractPlan plan(Checkpoint base, Checkpoint tuned, ExtractOptions options)
            throws ExtractException, UsageException, QuantException, IOException {
        refuseQuantized(base, "--base");
        refuseQuantized(tuned, "--tuned");
        checkArchitecture(base, tuned);
        checkTensorSets(base, tuned);
        List<String> warnings = new ArrayList<>();
        warnings.addAll(base.warnings());
        warnings.addAll(tuned.warnings());
        String embedName = Planner.findEmbedding(base);
        // the adapter names modules as transformers loads the checkpoint (a vision-language model's differ), as PEFT saves them
        LoadedNames names = LoadedNames.of(base);
        String embedModule = embedName == null ? null : module(embedName);
        List<String> problems = new ArrayList<>();
        ExtractException.Reason firstReason = null;
        List<ExtractPlan.Target> targets = new ArrayList<>();
        List<ExtractPlan.Other> others = new ArrayList<>();
        Set<String> unmatched = options.allLinear() ? Set.of() : new LinkedHashSet<>(options.targets());
        List<String> notWeights = new ArrayList<>();
        for (TensorInfo b : base.tensors().values()) {
            TensorInfo t = tuned.tensor(b.name());
            TensorSource bs = new TensorSource(base.fileOf(b.name()), b);
            TensorSource ts = new TensorSource(tuned.fileOf(b.name()), t);
            if (b.dtype().isMergeable() != t.dtype().isMergeable() || !b.dtype().isMergeable() && b.dtype() != t.dtype()) {
                problems.add(b.name() + " is " + b.dtype() + " in the base but " + t.dtype() + " in the tuned model");
                firstReason = firstReason == null ? DTYPE : firstReason;
                continue;
            }
            boolean vocabulary = b.name().equals(embedName) || OUTPUT_HEADS.contains(lastSegment(module(b.name())));
            boolean resized = false;
            if (!Arrays.equals(b.shape(), t.shape())) {
                if (vocabulary && b.rank() == 2 && t.rank() == 2 && b.dim(1) == t.dim(1)) {
                    resized = true; // a resized vocabulary: PEFT saves the whole tensor (modules_to_save)
                } else {
                    problems.add(b.name() + " has shape " + TensorInfo.shapeString(b.shape()) + " in the base but "
                            + TensorInfo.shapeString(t.shape()) + " in the tuned model");
                    firstReason = firstReason == null ? SHAPE : firstReason;
                    continue;
                }
            }
            String module = module(b.name());
            Layout layout = null;
            boolean named = !options.allLinear() && (matchesAny(options.targets(), module, unmatched)
                    | matchesAny(options.targets(), names.loaded(module), unmatched));
            boolean matrix = b.name().endsWith(".weight") && b.rank() == 2 && b.dtype().isMergeable() && !resized;
            if (named && !matrix && b.name().endsWith(".weight")) {
                notWeights.add(b.name() + " " + TensorInfo.shapeString(b.shape()) + (resized ? " (resized)" : ""));
            }
            if (matrix && (named || options.allLinear())) {
                if (OUTPUT_HEADS.contains(lastSegment(module))) {
                    layout = named || options.embeddings() ? Layout.LINEAR : null; // an nn.Linear, also in GPT-2
                } else if (module.equals(embedModule) || isEmbeddingName(module)) {
                    layout = named || options.embeddings() && module.equals(embedModule) ? Layout.EMBEDDING : null;
                } else {
                    layout = base.usesConv1D() ? Layout.CONV1D : Layout.LINEAR;
                }
            }
            if (layout != null) {
                DType factorType = options.dtype() != null ? options.dtype() : b.dtype();
                targets.add(new ExtractPlan.Target(names.loaded(module), layout, bs, ts, b.shape(), factorType));
            } else {
                others.add(new ExtractPlan.Other(names.loaded(b.name()), names.loaded(module), bs, ts, resized, false));
            }
        }
        if (!problems.isEmpty()) {
            throw new ExtractException(firstReason, "the tuned model " + tuned.dir() + " does not fit the base " + base.dir()
                    + ": is it a fine-tune of another model? Pass the base it was fine-tuned from; nothing was written:\n  - "
                    + abbreviate(problems, 20));
        }
        if (!unmatched.isEmpty()) {
            throw new UsageException("--target " + String.join(",", unmatched) + ": no module of " + base.dir() + " has that name; "
                    + "use module names such as q_proj or model.layers.0.self_attn.q_proj (`loramerge inspect` lists the tensors)");
        }
        if (!notWeights.isEmpty()) {
            throw new UsageException("--target names tensors that are not 2-D weights, which a LoRA pair cannot express: "
                    + abbreviate(notWeights, 10) + "; name Linear, Conv1D or embedding modules (norms and biases are saved whole or "
                    + "reported, see --others)");
        }
        Set<String> targetModules = new LinkedHashSet<>();
        targets.forEach(x -> targetModules.add(x.module()));
        List<ExtractPlan.Other> marked = new ArrayList<>();
        for (ExtractPlan.Other o : others) {
            boolean bias = o.name().endsWith(".bias") && targetModules.contains(o.module());
            marked.add(new ExtractPlan.Other(o.name(), o.module(), o.base(), o.tuned(), o.resized(), bias));
        }
        if (targets.isEmpty()) {
            warnings.add("no weight of " + base.dir() + " is a LoRA target" + (options.allLinear() ? " (all-linear found no Linear weight)" : "")
                    + "; only whole tensors can be saved");
        }
        return new ExtractPlan(targets, marked, options, taskType(base), warnings);
    }

    private static void refuseQuantized(Checkpoint c, String option) throws QuantException, IOException, ExtractException {
        QuantizedModel q = WeightFormats.detect(c);
        if (q.isQuantized()) {
            throw new ExtractException(QUANTIZED, option + " " + c.dir() + " has " + q.weights().size() + " quantized (" + q.formatName()
                    + ") weights; extract needs the dense weights of both models: pass the 16-bit (or 32-bit) checkpoints");
        }
    }

    private static void checkArchitecture(Checkpoint base, Checkpoint tuned) throws ExtractException {
        if (base.config() == null || tuned.config() == null) {
            return;
        }
        for (String field : new String[] {"model_type", "architectures"}) {
            JsonNode a = base.config().get(field);
            JsonNode b = tuned.config().get(field);
            if (a != null && b != null && !a.equals(b)) {
                throw new ExtractException(ARCHITECTURE, "config.json of the base " + base.dir() + " says " + field + " " + a + " but that of the tuned model "
                        + tuned.dir() + " says " + b + "; an adapter can only be extracted from a fine-tune of the same architecture: "
                        + "pass the base it was fine-tuned from");
            }
        }
    }

    private static void checkTensorSets(Checkpoint base, Checkpoint tuned) throws ExtractException {
        List<String> onlyBase = new ArrayList<>();
        List<String> onlyTuned = new ArrayList<>();
        for (String n : base.tensors().keySet()) {
            if (tuned.tensor(n) == null) {
                onlyBase.add(n);
            }
        }
        for (String n : tuned.tensors().keySet()) {
            if (base.tensor(n) == null) {
                onlyTuned.add(n);
            }
        }
        if (!onlyBase.isEmpty() || !onlyTuned.isEmpty()) {
            StringBuilder sb = new StringBuilder("the base " + base.dir() + " and the tuned model " + tuned.dir() + " hold different tensors");
            if (!onlyBase.isEmpty()) {
                sb.append("; only in the base: ").append(abbreviate(onlyBase, 5));
            }
            if (!onlyTuned.isEmpty()) {
                sb.append("; only in the tuned model: ").append(abbreviate(onlyTuned, 5));
            }
            sb.append(". Pass the base the model was fine-tuned from, saved the same way (an untied lm_head or a different "
                    + "architecture cannot be extracted as an adapter); nothing was written");
            throw new ExtractException(TENSOR_SETS, sb.toString());
        }
    }

    private static boolean matchesAny(List<String> names, String module, Set<String> unmatched) {
        boolean any = false;
        for (String n : names) {
            if (module.equals(n) || module.endsWith("." + n)) {
                unmatched.remove(n);
                any = true;
            }
        }
        return any;
    }

    private static boolean isEmbeddingName(String module) {
        String last = lastSegment(module);
        return last.contains("embed") || last.equals("wte") || last.equals("wpe");
    }

    static String module(String tensorName) {
        int dot = tensorName.lastIndexOf('.');
        return dot < 0 ? tensorName : tensorName.substring(0, dot);
    }

    private static String lastSegment(String module) {
        return module.substring(module.lastIndexOf('.') + 1);
    }

    /** PEFT's task_type for the base's first architecture, or null when none fits. */
    private static String taskType(Checkpoint base) {
        if (base.config() == null) {
            return null;
        }
        String arch = base.config().path("architectures").path(0).asText("");
        if (arch.endsWith("ForCausalLM")) {
            return "CAUSAL_LM";
        }
        if (arch.endsWith("ForSequenceClassification")) {
            return "SEQ_CLS";
        }
        if (arch.endsWith("ForTokenClassification")) {
            return "TOKEN_CLS";
        }
        return null;
    }

    private static String abbreviate(List<String> items, int max) {
        int shown = Math.min(max, items.size());
        String s = String.join(max > 5 ? "\n  - " : ", ", items.subList(0, shown));
        return items.size() > shown ? s + (max > 5 ? "\n  - " : ", ") + "... and " + (items.size() - shown) + " more" : s;
    }
}
