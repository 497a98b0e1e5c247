package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Bnb4BitConfig;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.Nf4Detector;
import org.loramerge.quant.Nf4Requantizer;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantException;

import static org.loramerge.adapter.AdapterException.Reason.BASE_DTYPE;
import static org.loramerge.adapter.AdapterException.Reason.CONFIG_MISMATCH;
import static org.loramerge.adapter.AdapterException.Reason.MISSING_PARTNER;
import static org.loramerge.adapter.AdapterException.Reason.NO_SUCH_BASE_TENSOR;
import static org.loramerge.adapter.AdapterException.Reason.SHAPE_MISMATCH;
import static org.loramerge.adapter.AdapterException.Reason.UNSUPPORTED;

/**
 * Decides, from the base's and the adapter's headers and configs alone, what every output tensor
 * is and where it goes. Any problem stops here, before anything is written, and the exception
 * names every offending key.
 */
public final class Planner {
    /** Input-embedding tensor names of common architectures, most common first. */
    private static final List<String> EMBEDDING_SUFFIXES = List.of(
            "embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight", "tok_embeddings.weight");
    private static final String LM_HEAD = "lm_head.weight";

    private final Checkpoint base;
    private final LoraAdapter adapter;
    private final AdapterConfig config;
    private final PlanOptions options;
    private final List<String> problems = new ArrayList<>();
    private AdapterException.Reason firstReason;
    private final List<String> warnings = new ArrayList<>();
    private final List<String> notes = new ArrayList<>();
    private final Map<String, String> keyUse = new LinkedHashMap<>();
    private Nf4Detector.Result quant = Nf4Detector.NONE;

    /** The work on one output tensor, gathered from the adapter keys. */
    private static final class Ops {
        TensorSource replacement;
        final List<TermSpec> terms = new ArrayList<>();
        DoraSpec dora;
        TokenRows tokens;
        final List<String> keys = new ArrayList<>();

        boolean isEmpty() {
            return replacement == null && terms.isEmpty() && dora == null && tokens == null;
        }
    }

    /** The LoRA parts of one module. */
    private static final class Parts {
        final Map<AdapterKey.Kind, AdapterKey> byKind = new LinkedHashMap<>();
    }

    private Planner(Checkpoint base, LoraAdapter adapter, PlanOptions options) {
        this.base = base;
        this.adapter = adapter;
        this.config = adapter.config();
        this.options = options;
    }

    /**
     * Plans the merge. A bitsandbytes 4-bit base (found by {@link Nf4Detector}) needs
     * {@code options.to()}; any other base must come without it.
     *
     * @throws QuantException when the base is a 4-bit checkpoint loramerge cannot read (FP4, 8-bit, incomplete groups)
     */
    public static MergePlan plan(Checkpoint base, LoraAdapter adapter, PlanOptions options) throws AdapterException, IOException, QuantException {
        return new Planner(base, adapter, options).build();
    }

    private MergePlan build() throws AdapterException, IOException, QuantException {
        warnings.addAll(base.warnings());
        warnings.addAll(config.warnings());
        quant = Nf4Detector.detectIfBitsandbytes(base);
        if (quant.isQuantized() && options.to() == null) {
            throw new IllegalArgumentException(base.dir() + " has bitsandbytes 4-bit weights: a target (QuantTarget) is required");
        }
        if (!quant.isQuantized() && options.to() != null) {
            throw new IllegalArgumentException(base.dir() + " has no bitsandbytes 4-bit weights: a target (" + options.to() + ") does not apply");
        }
        warnings.addAll(quant.warnings());
        String embedName = findEmbedding();
        boolean tieFlag = base.config() == null || base.config().path("tie_word_embeddings").asBoolean(true);
        boolean tied = tieFlag && embedName != null && base.tensor(LM_HEAD) == null;

        Map<String, Parts> modules = new LinkedHashMap<>();
        Map<String, AdapterKey> replacements = new LinkedHashMap<>();
        for (AdapterKey k : adapter.keys().values()) {
            if (k.kind() == AdapterKey.Kind.ORIGINAL_MODULE) {
                keyUse.put(k.key(), "(PEFT's copy of the original " + k.module() + "; not used by a merge)");
            } else if (k.kind() == AdapterKey.Kind.REPLACE || k.kind() == AdapterKey.Kind.MODULES_TO_SAVE) {
                AdapterKey previous = replacements.get(k.module());
                if (previous == null) {
                    replacements.put(k.module(), k);
                } else if (previous.kind() != k.kind()) {
                    // M.weight and M.modules_to_save.weight: PEFT writes both; the trained copy is the one it merges
                    AdapterKey trained = k.kind() == AdapterKey.Kind.MODULES_TO_SAVE ? k : previous;
                    AdapterKey plain = trained == k ? previous : k;
                    replacements.put(k.module(), trained);
                    keyUse.put(plain.key(), "(same module as " + trained.key() + ", which is used)");
                } else {
                    problem(CONFIG_MISMATCH, "keys " + previous.key() + " and " + k.key() + " both replace " + k.module());
                }
            } else {
                AdapterKey previous = modules.computeIfAbsent(k.module(), m -> new Parts()).byKind.put(k.kind(), k);
                if (previous != null) {
                    problem(CONFIG_MISMATCH, "keys " + previous.key() + " and " + k.key() + " play the same role for " + k.module());
                }
            }
        }

        Map<String, Ops> ops = new LinkedHashMap<>();
        Map<String, long[]> shapes = new LinkedHashMap<>();
        for (TensorInfo t : base.tensors().values()) {
            shapes.put(t.name(), t.shape());
        }
        for (Nf4Tensor q : quant.weights().values()) {
            shapes.put(q.weightName(), q.shape()); // the weight's own shape, not that of its packed codes
        }
        if (tied) {
            shapes.put(LM_HEAD, base.tensor(embedName).shape());
        }
        // 1. replacements: base_layer weights, modules_to_save, biases
        Long newVocab = null;
        for (AdapterKey k : replacements.values()) {
            String target = k.module();
            TensorInfo src = adapter.tensor(k.key());
            long[] baseShape = shapes.get(target);
            if (baseShape == null) {
                problem(NO_SUCH_BASE_TENSOR, "adapter key " + k.key() + " replaces " + target + ", which the base model does not have");
                continue;
            }
            if (quant.weight(target) != null || quant.groupTensorNames().contains(target)) {
                problem(UNSUPPORTED, "adapter key " + k.key() + " replaces " + target + ", a 4-bit weight of the base; replacing a quantized "
                        + "weight is not supported: merge into the original 16-bit base");
                continue;
            }
            if (!Arrays.equals(baseShape, src.shape())) {
                boolean vocabTensor = target.equals(embedName) || target.equals(LM_HEAD);
                if (vocabTensor && baseShape.length == 2 && src.rank() == 2 && baseShape[1] == src.dim(1)) {
                    if (newVocab != null && newVocab != src.dim(0)) {
                        problem(SHAPE_MISMATCH, "adapter resizes the vocabulary to both " + newVocab + " and " + src.dim(0) + " rows (" + k.key() + ")");
                    }
                    newVocab = src.dim(0);
                } else {
                    problem(SHAPE_MISMATCH, "adapter key " + k.key() + " has shape " + TensorInfo.shapeString(src.shape()) + " but base tensor " + target
                            + " has " + TensorInfo.shapeString(baseShape));
                    continue;
                }
            }
            DType baseType = target.equals(LM_HEAD) && tied ? base.tensor(embedName).dtype() : base.tensor(target).dtype();
            if (baseType.isMergeable() != src.dtype().isMergeable() || (!baseType.isMergeable() && baseType != src.dtype())) {
                problem(SHAPE_MISMATCH, "adapter key " + k.key() + " is " + src.dtype() + " but base tensor " + target + " is " + baseType);
                continue;
            }
            Ops o = ops.computeIfAbsent(target, x -> new Ops());
            o.replacement = new TensorSource(adapter.file(), src);
            o.keys.add(k.key());
            shapes.put(target, src.shape());
        }
        if (newVocab != null) {
            notes.add("vocabulary resized to " + newVocab + " rows by the adapter; config.json vocab_size follows");
        }
        // 2. LoRA parts, per module
        for (Map.Entry<String, Parts> e : modules.entrySet()) {
            planModule(e.getKey(), e.getValue(), shapes, ops, embedName, tied);
        }
        if (!problems.isEmpty()) {
            throw new AdapterException(firstReason, adapter.dir(), "cannot merge; nothing was written:\n  - " + String.join("\n  - ", problems));
        }

        // 3. tied embeddings (FORMATS.md §7): apply an identical delta once, otherwise untie
        boolean untie = false;
        Ops headOps = tied ? ops.remove(LM_HEAD) : null;
        if (headOps != null && !headOps.isEmpty()) {
            Ops embedOps = ops.get(embedName);
            if (embedOps != null && sameDelta(embedOps, headOps, shapes.get(embedName))) {
                notes.add("tied embeddings: " + embedName + " and lm_head carry the same delta; applied once to the shared tensor, which stays tied");
                for (String key : headOps.keys) {
                    keyUse.put(key, embedName);
                }
            } else {
                untie = true;
                notes.add("tied embeddings: lm_head's delta differs from " + embedName
                        + "'s; lm_head.weight is written explicitly and config.json gets tie_word_embeddings: false"
                        + " (PEFT would merge it into the shared tensor and so change the input embedding too)");
                if (embedOps != null && headOps.replacement == null) {
                    // what the shared tensor was replaced with, and its new token rows, belong to the head too
                    headOps.replacement = embedOps.replacement;
                    if (headOps.tokens == null) {
                        headOps.tokens = embedOps.tokens;
                    }
                }
                ops.put(LM_HEAD, headOps);
            }
        }

        // 4. output tensors in base order
        List<OutputTensor> outputs = new ArrayList<>();
        Map<String, Nf4Tensor> groupOf = new LinkedHashMap<>();
        for (Nf4Tensor q : quant.weights().values()) {
            q.tensorNames().forEach(n -> groupOf.put(n, q));
        }
        int requantized = 0;
        int dequantized = 0;
        for (TensorInfo t : base.tensors().values()) {
            Nf4Tensor group = groupOf.get(t.name());
            if (group == null) {
                outputs.add(output(t.name(), new TensorSource(base.fileOf(t.name()), t), ops.get(t.name()), null));
                continue;
            }
            Ops o = ops.get(group.weightName());
            boolean adapted = o != null && !o.isEmpty();
            if (options.to() == QuantTarget.NF4 && !adapted) {
                // an untouched 4-bit weight keeps its bytes, as PEFT's merge leaves unadapted layers alone:
                // requantizing it would only move it
                outputs.add(new OutputTensor(t.name(), t.dtype(), t.shape(), new TensorSource(base.fileOf(t.name()), t), List.of(), null, null,
                        OutputTensor.Kind.COPY, null));
            } else if (t.name().equals(group.weightName())) {
                outputs.add(quantizedOutput(group, adapted ? o : null));
                if (options.to() == QuantTarget.NF4) {
                    requantized++;
                } else {
                    dequantized++;
                }
            }
            // the group's other tensors are written with the requantized weight, or dropped when it is written dense
        }
        if (requantized > 0) {
            notes.add(requantized + " of " + quant.weights().size() + " 4-bit weights merged and requantized to NF4 with their own blocksize and "
                    + "double-quantization setting; the other " + (quant.weights().size() - requantized) + " keep their bytes");
        }
        if (dequantized > 0) {
            notes.add(dequantized + " 4-bit weights dequantized to " + options.to().denseType() + " (merged into the dequantized NF4 values); "
                    + "config.json loses quantization_config");
        }
        if (untie && tied) {
            TensorInfo embed = base.tensor(embedName);
            outputs.add(output(LM_HEAD, new TensorSource(base.fileOf(embedName), embed), ops.get(LM_HEAD), "untied from " + embedName));
        }
        for (Map.Entry<String, Ops> e : ops.entrySet()) {
            String outName = e.getKey();
            for (String key : e.getValue().keys) {
                keyUse.putIfAbsent(key, outName);
            }
        }
        for (String key : adapter.keys().keySet()) {
            if (!keyUse.containsKey(key)) {
                throw new IllegalStateException("adapter key " + key + " was not placed; this is a loramerge bug");
            }
        }

        ObjectNode newConfig = updatedConfig(newVocab, untie);
        List<MergePlan.Shard> shards = assignShards(outputs);
        return new MergePlan(outputs, shards, newConfig, filesToCarry(), keyUse, warnings, notes);
    }

    /**
     * The base folder's files the output carries ({@link Checkpoint#nonWeightFiles()}, which never
     * holds an adapter's files). When --base and --adapter are one folder its README is the adapter's
     * model card (PEFT's save_pretrained writes one), so it stays behind too. A note names what stayed.
     */
    private List<Path> filesToCarry() throws IOException {
        List<Path> files = new ArrayList<>(base.nonWeightFiles());
        List<String> left = new ArrayList<>(base.adapterFiles());
        boolean oneFolder = Files.isSameFile(base.dir(), adapter.dir());
        if (oneFolder) {
            files.removeIf(p -> {
                String name = p.getFileName().toString();
                boolean readme = name.toLowerCase(Locale.ROOT).startsWith("readme");
                if (readme) {
                    left.add(name);
                }
                return readme;
            });
        }
        if (!left.isEmpty()) {
            notes.add("not carried into the output: " + String.join(", ", left) + (oneFolder
                    ? " (--base and --adapter are the same folder: these describe the adapter, and loaders would take the merged model for one)"
                    : " (an adapter's files never go into a merged model)"));
        }
        return files;
    }

    /** Records a problem; the merge stops after planning, naming all of them, with the first one's reason. */
    private void problem(AdapterException.Reason reason, String message) {
        if (firstReason == null) {
            firstReason = reason;
        }
        problems.add(message);
    }

    private void planModule(String module, Parts parts, Map<String, long[]> shapes, Map<String, Ops> ops, String embedName, boolean tied)
            throws IOException {
        Map<AdapterKey.Kind, AdapterKey> p = parts.byKind;
        AdapterKey a = p.get(AdapterKey.Kind.LORA_A);
        AdapterKey b = p.get(AdapterKey.Kind.LORA_B);
        AdapterKey ea = p.get(AdapterKey.Kind.EMBEDDING_A);
        AdapterKey eb = p.get(AdapterKey.Kind.EMBEDDING_B);
        AdapterKey bias = p.get(AdapterKey.Kind.LORA_B_BIAS);
        AdapterKey mag = p.get(AdapterKey.Kind.MAGNITUDE);
        AdapterKey tokens = p.get(AdapterKey.Kind.TOKEN_ROWS);
        String weightName = module + ".weight";
        long[] w = shapes.get(weightName);
        if (w == null) {
            List<String> keys = new ArrayList<>();
            p.values().forEach(k -> keys.add(k.key()));
            problem(NO_SUCH_BASE_TENSOR, "adapter keys " + String.join(", ", keys) + " are for module " + module + ", but the base model has no tensor "
                    + weightName + "; is this adapter for another model? Pass the base it was trained on (adapter_config.json base_model_name_or_path)");
            return;
        }
        if ((a != null || b != null) && (ea != null || eb != null)) {
            problem(CONFIG_MISMATCH, "module " + module + " has both lora_A/lora_B and lora_embedding_A/B keys");
            return;
        }
        boolean hasLora = a != null || b != null || ea != null || eb != null;
        if (hasLora) {
            AdapterKey first = a != null ? a : ea;
            AdapterKey second = b != null ? b : eb;
            if (first == null || second == null) {
                AdapterKey present = first != null ? first : second;
                problem(MISSING_PARTNER, "adapter key " + present.key() + " is without its partner "
                        + present.key().replace(first != null ? "_A" : "_B", first != null ? "_B" : "_A"));
                return;
            }
            if (config.hasTargetRule() && !config.targets(module) && !targetedThroughTying(module, embedName, tied)) {
                problem(CONFIG_MISMATCH, "adapter keys " + first.key() + " and " + second.key() + " are for module " + module
                        + ", which adapter_config.json does not target (target_modules / exclude_modules / layers_to_transform); "
                        + "PEFT would silently ignore them. Fix the config or the adapter");
                return;
            }
        }
        if (w.length == 0) {
            problem(SHAPE_MISMATCH, "adapter targets " + module + ", whose weight is a scalar");
            return;
        }
        if ((hasLora || mag != null || tokens != null) && !floatingPointBase(weightName, embedName, tied, p.values())) {
            return;
        }
        Ops o = ops.computeIfAbsent(weightName, x -> new Ops());
        int rank = config.rankFor(module);
        double scale = config.scaleFor(module);
        Layout layout = null;
        if (hasLora) {
            TensorInfo ta = adapter.tensor(a != null ? a.key() : ea.key());
            TensorInfo tb = adapter.tensor(b != null ? b.key() : eb.key());
            if (!ta.dtype().isMergeable() && ta.dtype() != DType.F64 || !tb.dtype().isMergeable() && tb.dtype() != DType.F64) {
                problem(UNSUPPORTED, "LoRA factors of " + module + " are " + ta.dtype() + "/" + tb.dtype()
                        + "; quantized adapters are not supported, re-save the adapter in F32, F16 or BF16");
                return;
            }
            if (ea != null) {
                layout = Layout.EMBEDDING;
            } else {
                layout = linearLayout(module, w, ta, tb);
            }
            if (!checkShapes(module, layout, w, ta, tb, rank)) {
                return;
            }
            o.terms.add(new TermSpec(module, layout, new TensorSource(adapter.file(), ta), new TensorSource(adapter.file(), tb), rank, scale));
            o.keys.add(ta.name());
            o.keys.add(tb.name());
        }
        if (mag != null) {
            if (!config.useDora()) {
                problem(CONFIG_MISMATCH, "adapter key " + mag.key() + " is a DoRA magnitude, but adapter_config.json has no use_dora: true");
                return;
            }
            if (layout == null) {
                problem(MISSING_PARTNER, "adapter key " + mag.key() + " is a DoRA magnitude without the module's lora_A/lora_B");
                return;
            }
            TensorInfo tm = adapter.tensor(mag.key());
            boolean byRow = layout == Layout.LINEAR;
            long expected = byRow ? w[0] : w[1];
            if (tm.numElements() != expected) {
                problem(SHAPE_MISMATCH, "DoRA magnitude " + mag.key() + " has " + tm.numElements() + " values but " + weightName + " has "
                        + expected + (byRow ? " rows" : " columns"));
                return;
            }
            o.dora = new DoraSpec(byRow ? DoraSpec.Axis.ROW : DoraSpec.Axis.COLUMN, new TensorSource(adapter.file(), tm));
            o.keys.add(mag.key());
        } else if (hasLora && config.useDora()) {
            problem(CONFIG_MISMATCH, "adapter_config.json has use_dora: true but " + module + " has no lora_magnitude_vector");
            return;
        }
        if (bias != null) {
            String biasName = module + ".bias";
            long[] bs = shapes.get(biasName);
            TensorInfo tb = adapter.tensor(bias.key());
            if (bs == null) {
                problem(NO_SUCH_BASE_TENSOR, "adapter key " + bias.key() + " adds to " + biasName + ", which the base model does not have");
            } else if (!floatingPointBase(biasName, embedName, tied, List.of(bias))) {
                // recorded as a problem; the module's token rows are still checked
            } else if (!Arrays.equals(bs, tb.shape())) {
                problem(SHAPE_MISMATCH, "adapter key " + bias.key() + " has shape " + TensorInfo.shapeString(tb.shape()) + " but " + biasName + " has "
                        + TensorInfo.shapeString(bs));
            } else {
                Ops ob = ops.computeIfAbsent(biasName, x -> new Ops());
                ob.terms.add(new TermSpec(module, Layout.BIAS, null, new TensorSource(adapter.file(), tb), 1, scale));
                ob.keys.add(bias.key());
            }
        }
        if (tokens != null) {
            List<Long> idx = config.tokenIndicesFor(module, module.equals(stripWeight(embedName)));
            TensorInfo tv = adapter.tensor(tokens.key());
            if (idx == null) {
                problem(CONFIG_MISMATCH, "adapter key " + tokens.key() + " holds token rows, but adapter_config.json's trainable_token_indices names no indices for " + module);
            } else if (w.length != 2 || tv.rank() != 2 || tv.dim(0) != idx.size() || tv.dim(1) != w[1]) {
                problem(SHAPE_MISMATCH, "adapter key " + tokens.key() + " has shape " + TensorInfo.shapeString(tv.shape()) + " but " + idx.size()
                        + " token ids of a " + TensorInfo.shapeString(w) + " embedding need [" + idx.size() + ", " + (w.length > 1 ? w[1] : 0) + "]");
            } else {
                long[] ids = new long[idx.size()];
                for (int i = 0; i < ids.length; i++) {
                    ids[i] = idx.get(i);
                    if (ids[i] >= w[0]) {
                        problem(CONFIG_MISMATCH, "trainable_token_indices holds token id " + ids[i] + " but " + weightName + " has " + w[0] + " rows");
                        return;
                    }
                }
                o.tokens = new TokenRows(ids, new TensorSource(adapter.file(), tv));
                o.keys.add(tokens.key());
            }
        }
    }

    /**
     * Whether {@code tensorName}, which the adapter's {@code keys} change, holds floating-point values
     * the merge computes in (F32, F16, BF16, or a 4-bit weight's dequantized values); otherwise a
     * problem naming the tensor, its file and dtype. An integer or FP8 weight is not what a LoRA
     * adapter is trained on.
     */
    private boolean floatingPointBase(String tensorName, String embedName, boolean tied, Collection<AdapterKey> keys) {
        if (quant.weight(tensorName) != null) {
            return true;
        }
        String stored = tied && tensorName.equals(LM_HEAD) && base.tensor(LM_HEAD) == null ? embedName : tensorName;
        TensorInfo t = base.tensor(stored);
        if (t == null || t.dtype().isMergeable()) {
            return true;
        }
        List<String> names = new ArrayList<>();
        keys.forEach(k -> names.add(k.key()));
        problem(BASE_DTYPE, "adapter keys " + String.join(", ", names) + " change base tensor " + stored + " (" + base.fileOf(stored).path()
                + "), which is " + t.dtype() + "; a LoRA merge computes in floating point (F32, F16, BF16) and the adapter was trained on such "
                + "weights: pass the floating-point base model the adapter was trained on (adapter_config.json base_model_name_or_path)");
        return false;
    }

    /** With ensure_weight_tying, PEFT wraps lm_head of a tied model when the embedding is targeted, and the other way round. */
    private boolean targetedThroughTying(String module, String embedName, boolean tied) {
        if (!tied || !config.ensureWeightTying()) {
            return false;
        }
        String embedModule = stripWeight(embedName);
        String headModule = stripWeight(LM_HEAD);
        return module.equals(headModule) && config.targets(embedModule) || module.equals(embedModule) && config.targets(headModule);
    }

    /** nn.Linear or GPT-2's Conv1D: decided by the architecture, then by the shapes, then by fan_in_fan_out (as PEFT corrects a wrong flag from the layer type). */
    private Layout linearLayout(String module, long[] w, TensorInfo a, TensorInfo b) {
        if (w.length != 2) {
            return Layout.LINEAR; // Conv1d/2d/3d: flattened like a Linear
        }
        String modelType = base.modelType();
        if (base.usesConv1D() && !module.endsWith("lm_head")) {
            if (!config.fanInFanOut()) {
                warnings.add(module + " is a Conv1D layer of a " + modelType + " model but fan_in_fan_out is false; treated as true, as PEFT does");
            }
            return Layout.CONV1D;
        }
        long in = a.rank() == 2 ? a.dim(1) : -1;
        long out = b.rank() >= 1 ? b.dim(0) : -1;
        boolean fitsLinear = w[0] == out && w[1] == in;
        boolean fitsConv1d = w[0] == in && w[1] == out;
        if (fitsLinear && !fitsConv1d) {
            return Layout.LINEAR;
        }
        if (fitsConv1d && !fitsLinear) {
            return Layout.CONV1D;
        }
        return config.fanInFanOut() ? Layout.CONV1D : Layout.LINEAR;
    }

    private boolean checkShapes(String module, Layout layout, long[] w, TensorInfo a, TensorInfo b, int rank) {
        String where = module + " (" + layout.name().toLowerCase(Locale.ROOT) + ", base " + TensorInfo.shapeString(w) + ", lora_A "
                + TensorInfo.shapeString(a.shape()) + ", lora_B " + TensorInfo.shapeString(b.shape()) + ")";
        if (a.rank() < 2 || b.rank() < 2) {
            problem(SHAPE_MISMATCH, "LoRA factors of " + where + " are not matrices; shape mismatch");
            return false;
        }
        long rA = a.dim(0);
        long rB = b.dim(1);
        if (rA != rB) {
            problem(SHAPE_MISMATCH, "lora_A has " + rA + " rows but lora_B has " + rB + " columns for " + where + "; shape mismatch");
            return false;
        }
        if (rA != rank) {
            problem(CONFIG_MISMATCH, "adapter_config.json gives " + module + " rank " + rank + " (r / rank_pattern) but its factors have rank " + rA
                    + "; the scale would be wrong, so the config does not belong to these weights");
            return false;
        }
        boolean ok;
        switch (layout) {
            case LINEAR: {
                long wRest = TensorInfo.numElements(w) / w[0];
                ok = b.dim(0) == w[0] && b.numElements() == w[0] * rA && a.numElements() / rA == wRest
                        && (w.length == 2 ? a.rank() == 2 : a.rank() == w.length);
                break;
            }
            case CONV1D:
                ok = w.length == 2 && a.rank() == 2 && b.rank() == 2 && a.dim(1) == w[0] && b.dim(0) == w[1];
                break;
            case EMBEDDING:
                ok = w.length == 2 && a.rank() == 2 && b.rank() == 2 && a.dim(1) == w[0] && b.dim(0) == w[1];
                break;
            default:
                ok = false;
        }
        if (!ok) {
            problem(SHAPE_MISMATCH, "shape mismatch for " + where + "; is this adapter for another model? Pass the base it was trained on (adapter_config.json base_model_name_or_path)");
        }
        return ok;
    }

    private boolean sameDelta(Ops embed, Ops head, long[] shape) throws IOException {
        if (embed.replacement != null || head.replacement != null || embed.dora != null || head.dora != null
                || embed.tokens != null || head.tokens != null || embed.terms.size() != head.terms.size()) {
            return false;
        }
        for (int i = 0; i < embed.terms.size(); i++) {
            LowRankTerm x = LowRankTerm.load(embed.terms.get(i), shape[0], shape[1]);
            LowRankTerm y = LowRankTerm.load(head.terms.get(i), shape[0], shape[1]);
            if (!x.sameAs(y)) {
                return false;
            }
        }
        return true;
    }

    /**
     * The output of a 4-bit weight that is dequantized ({@code --to bf16/f16/f32}) or merged and
     * requantized ({@code --to nf4}). Its base value is the dequantized weight in the quant state's
     * dtype (see {@link TensorSource}); the merge adds ΔW to it exactly and rounds once, to the
     * target dtype, or for NF4 to the quant state's dtype, which is then requantized
     * ({@link org.loramerge.quant.Nf4Requantizer}). {@code o} is null when the adapter leaves the weight alone.
     */
    private OutputTensor quantizedOutput(Nf4Tensor q, Ops o) throws IOException, QuantException {
        if (o != null && (o.replacement != null || o.tokens != null)) {
            throw new IllegalStateException(q.weightName() + " is a 4-bit weight and cannot be replaced or take token rows");
        }
        TensorSource src = TensorSource.dequantized(q);
        List<TermSpec> terms = o == null ? List.of() : o.terms;
        DoraSpec dora = o == null ? null : o.dora;
        if (options.to() == QuantTarget.NF4) {
            if (q.isDoubleQuant() && q.state().nested().blocksize() != DoubleQuant.NESTED_BLOCKSIZE) {
                warnings.add(q.weightName() + " has nested blocks of " + q.state().nested().blocksize() + "; its requantized absmax uses "
                        + DoubleQuant.NESTED_BLOCKSIZE + ", as bitsandbytes always does");
            }
            return new OutputTensor(q.weightName(), q.dtype(), q.shape(), src, terms, dora, null, OutputTensor.Kind.MERGE, null,
                    Nf4Output.of(Nf4Requantizer.outputTemplate(q.state())));
        }
        OutputTensor.Kind kind = o == null ? OutputTensor.Kind.DEQUANTIZE : OutputTensor.Kind.MERGE;
        return new OutputTensor(q.weightName(), options.to().denseType(), q.shape(), src, terms, dora, null, kind, null);
    }

    private OutputTensor output(String name, TensorSource baseSource, Ops o, String note) {
        TensorInfo info = baseSource.info();
        DType outType = info.dtype();
        if (options.dtype() != null && info.dtype().isMergeable()) {
            outType = options.dtype();
        }
        if (o == null || o.isEmpty()) {
            OutputTensor.Kind kind = outType == info.dtype() ? OutputTensor.Kind.COPY : OutputTensor.Kind.CONVERT;
            return new OutputTensor(name, outType, info.shape(), baseSource, List.of(), null, null, kind, note);
        }
        TensorSource source = o.replacement != null ? o.replacement : baseSource;
        if (!info.dtype().isMergeable() && (!o.terms.isEmpty() || o.dora != null || o.tokens != null)) {
            throw new IllegalStateException(name + " is " + info.dtype() + " and cannot take LoRA terms");
        }
        OutputTensor.Kind kind = o.replacement != null ? OutputTensor.Kind.REPLACE : OutputTensor.Kind.MERGE;
        return new OutputTensor(name, outType, source.info().shape(), source, o.terms, o.dora, o.tokens, kind, note);
    }

    private String findEmbedding() {
        for (String suffix : EMBEDDING_SUFFIXES) {
            for (TensorInfo t : base.tensors().values()) {
                if (t.rank() == 2 && (t.name().equals(suffix) || t.name().endsWith("." + suffix))) {
                    return t.name();
                }
            }
        }
        return null;
    }

    private static String stripWeight(String name) {
        return name == null ? null : name.substring(0, name.length() - ".weight".length());
    }

    private ObjectNode updatedConfig(Long newVocab, boolean untie) {
        boolean dequantize = quant.isQuantized() && options.to().denseType() != null;
        // the model's dtype: --dtype when given, else that of the dequantized weights, which are most of the model
        DType modelType = options.dtype() != null ? options.dtype() : dequantize ? options.to().denseType() : null;
        if (base.config() == null) {
            if (newVocab != null || untie || modelType != null) {
                warnings.add("the base has no config.json, so the vocabulary size, tie_word_embeddings or dtype change is not recorded anywhere");
            }
            return null;
        }
        ObjectNode c = base.config().deepCopy();
        if (dequantize) {
            // FORMATS.md §5: a dequantized output must drop quantization_config, or transformers would load dense weights as 4-bit
            c.remove(Bnb4BitConfig.KEY);
        }
        if (modelType != null) {
            String name = modelType.torchName();
            boolean any = false;
            if (c.has("dtype")) {
                c.put("dtype", name);
                any = true;
            }
            if (c.has("torch_dtype")) {
                c.put("torch_dtype", name);
                any = true;
            }
            if (!any) {
                c.put("torch_dtype", name);
            }
        }
        if (newVocab != null) {
            c.put("vocab_size", newVocab);
            JsonNode text = c.get("text_config");
            if (text instanceof ObjectNode && text.has("vocab_size")) {
                ((ObjectNode) text).put("vocab_size", newVocab);
            }
        }
        if (untie) {
            c.put("tie_word_embeddings", false);
        }
        return c;
    }

    private List<MergePlan.Shard> assignShards(List<OutputTensor> outputs) {
        List<List<OutputTensor>> groups = new ArrayList<>();
        List<OutputTensor> current = new ArrayList<>();
        long size = 0;
        for (OutputTensor t : outputs) {
            if (!current.isEmpty() && size + t.sizeInBytes() > options.maxShardSize()) {
                groups.add(current);
                current = new ArrayList<>();
                size = 0;
            }
            current.add(t);
            size += t.sizeInBytes();
        }
        groups.add(current);
        List<MergePlan.Shard> shards = new ArrayList<>();
        if (groups.size() == 1) {
            shards.add(new MergePlan.Shard("model.safetensors", groups.get(0)));
        } else {
            for (int i = 0; i < groups.size(); i++) {
                shards.add(new MergePlan.Shard(String.format(Locale.ROOT, "model-%05d-of-%05d.safetensors", i + 1, groups.size()), groups.get(i)));
            }
        }
        return shards;
    }
}
