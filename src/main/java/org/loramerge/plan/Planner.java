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
import java.util.Set;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Bnb4BitConfig;
import org.loramerge.quant.Nf4Output;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedOutput;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

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
 *
 * <p>The steps, in {@link #build}: find the base's quantized weights and settle what they become
 * ({@code --to}); group the adapter's keys by module; plan the tensors the adapter replaces, then
 * each module's LoRA terms, DoRA magnitude, bias and token rows; resolve tied embeddings; list the
 * output tensors in base order; then config.json and the shards.
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
    private QuantizedModel quant = QuantizedModel.none();
    /** The dtype every floating-point tensor that is not quantized is written in; null keeps each tensor's own. */
    private DType dtype;
    /** What the quantized weights become; null for a base without them. */
    private QuantTarget to;
    /** The base's quantization (a {@link QuantizedWeight#kind()}), null for a base without quantized weights. */
    private String kind;
    /** True when {@link #to} requantizes into another format than the base's (GPTQ or AWQ to NF4). */
    private boolean crossFormat;
    /** The output tensor's name to the work the adapter asks on it, in adapter order. */
    private final Map<String, Ops> ops = new LinkedHashMap<>();
    /** Every base tensor's shape by name, as the adapter sees it (a quantized weight's own shape, a tied lm_head, replacements). */
    private final Map<String, long[]> shapes = new LinkedHashMap<>();
    private String embedName;
    private boolean tied;

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

        OutputTensor.Update update() {
            return new OutputTensor.Update(terms, dora, tokens);
        }
    }

    /** The LoRA parts of one module. */
    private static final class Parts {
        final Map<AdapterKey.Kind, AdapterKey> byKind = new LinkedHashMap<>();
    }

    /** The adapter's keys grouped: LoRA parts by module, and whole tensors it replaces by target name. */
    private record KeyGroups(Map<String, Parts> modules, Map<String, AdapterKey> replacements) {
    }

    private Planner(Checkpoint base, LoraAdapter adapter, PlanOptions options) {
        this.base = base;
        this.adapter = adapter;
        this.config = adapter.config();
        this.options = options;
    }

    /**
     * Plans the merge. A base with quantized weights (bitsandbytes NF4) needs {@code options.to()};
     * for any other base {@code to} bf16/f16/f32 means the same as {@code dtype}.
     *
     * @throws QuantException when the base has quantized weights loramerge cannot read (FP4, 8-bit, incomplete groups)
     * @throws UsageException when {@code to} is missing for a quantized base, or does not apply to this one
     */
    public static MergePlan plan(Checkpoint base, LoraAdapter adapter, PlanOptions options)
            throws AdapterException, IOException, QuantException, UsageException {
        return new Planner(base, adapter, options).build();
    }

    private MergePlan build() throws AdapterException, IOException, QuantException, UsageException {
        warnings.addAll(base.warnings());
        warnings.addAll(config.warnings());
        quant = WeightFormats.detect(base);
        settleTarget();
        warnings.addAll(quant.warnings());
        embedName = findEmbedding();
        boolean tieFlag = base.config() == null || base.config().path("tie_word_embeddings").asBoolean(true);
        tied = tieFlag && embedName != null && base.tensor(LM_HEAD) == null;
        collectShapes();

        KeyGroups keys = groupKeys();
        Long newVocab = planReplacements(keys.replacements());
        if (newVocab != null) {
            notes.add("vocabulary resized to " + newVocab + " rows by the adapter; config.json vocab_size follows");
        }
        for (Map.Entry<String, Parts> e : keys.modules().entrySet()) {
            planModule(e.getKey(), e.getValue());
        }
        if (!problems.isEmpty()) {
            throw new AdapterException(firstReason, adapter.dir(), "cannot merge; nothing was written:\n  - " + String.join("\n  - ", problems));
        }
        boolean untie = resolveTiedEmbeddings();
        List<OutputTensor> outputs = outputTensors(untie);
        placeKeys();
        return new MergePlan(outputs, assignShards(outputs), updatedConfig(newVocab, untie), filesToCarry(), keyUse, warnings, notes);
    }

    /** Quantizations whose weights loramerge requantizes with their own format and settings ({@code --to <kind>}). */
    static final Set<String> REQUANTIZABLE = Set.of("nf4", "fp4", "fp8", "int8");
    /** Quantizations that need calibration data to requantize: refused as targets, with the alternatives. */
    static final Set<String> CALIBRATED = Set.of("gptq", "awq");
    /** NF4 settings of a GPTQ or AWQ base requantized to NF4: bitsandbytes' and transformers' defaults. */
    static final int CROSS_NF4_BLOCKSIZE = 64;

    /**
     * The one place that decides what {@code --to} means: required for a base with quantized
     * weights (dense, or requantized into the base's own format, or NF4 from GPTQ/AWQ), refused as a
     * quantized target for a base without, and the same as {@code --dtype} there otherwise.
     */
    private void settleTarget() throws UsageException {
        dtype = options.dtype();
        QuantTarget target = options.to();
        if (quant.isQuantized()) {
            kind = quant.weights().values().iterator().next().kind();
            String format = quant.format().name();
            boolean calibrated = CALIBRATED.contains(kind);
            if (target == null) {
                String requant = calibrated
                        ? "  --to nf4: dequantize, merge, quantize to bitsandbytes NF4 (blocksize " + CROSS_NF4_BLOCKSIZE + "): a 4-bit model "
                                + "that needs no calibration, in which part of the change is rounded away; the merge reports how much survives\n"
                                + "  (requantizing to " + kind.toUpperCase(Locale.ROOT) + " needs calibration data, which a merge does not have)\n"
                        : REQUANTIZABLE.contains(kind) && quant.weights().values().stream().allMatch(q -> q.whyNotRequantizable().isEmpty())
                        ? "  --to " + kind + ": dequantize, merge, requantize with the base's settings: a " + format + " model, in which part of "
                                + "the change is rounded away; the merge reports how much survives\n"
                        : "";
                throw new UsageException(base.dir() + " has " + quant.weights().size() + " quantized weights (" + format
                        + "): choose what they become with --to:\n"
                        + "  --to bf16 (or f16, f32): dequantize, merge, write dense weights: the adapter's change is kept, rounded once, "
                        + "in a dense model; config.json loses quantization_config\n" + requant
                        + "Both merge into the dequantized weights the adapter was trained against (docs/QLORA.md); to merge into "
                        + "the original 16-bit weights instead, pass the 16-bit model as --base");
            }
            to = target;
            if (target.isDense()) {
                return;
            }
            if (CALIBRATED.contains(target.kind())) {
                throw new UsageException("--to " + target.cliName() + ": " + target.name() + " quantization chooses its rounding from "
                        + "calibration data (activations of sample inputs), which a merge does not have, so loramerge does not write it. "
                        + "Use --to bf16 (or f16, f32) for a dense model that keeps the whole change"
                        + (calibrated ? ", or --to nf4 for a 4-bit model that needs no calibration" : "")
                        + ", and run your " + target.name() + " quantizer with your calibration set on that output if you need "
                        + target.name() + " weights");
            }
            if (target.kind().equals(kind) && REQUANTIZABLE.contains(kind)) {
                for (QuantizedWeight q : quant.weights().values()) {
                    if (q.whyNotRequantizable().isPresent()) {
                        throw new UsageException("--to " + target.cliName() + " cannot requantize " + q.weightName() + ": "
                                + q.whyNotRequantizable().get());
                    }
                }
                return;
            }
            if (calibrated && target == QuantTarget.NF4) {
                crossFormat = true;
                return;
            }
            throw new UsageException("--to " + target.cliName() + " writes " + target.name() + " weights, but " + base.dir() + " holds "
                    + format + " weights; " + (REQUANTIZABLE.contains(kind) ? "--to " + kind + " requantizes them with their own settings, " : "")
                    + (calibrated ? "--to nf4 quantizes them to NF4, " : "") + "--to bf16 (or f16, f32) writes them dense");
        }
        if (target != null && !target.isDense()) {
            throw new UsageException("--to " + target.cliName() + " merges into a quantized base and requantizes, but " + base.dir()
                    + " has no quantized weights; merge without --to, then run `loramerge quantize` on the result for an NF4 model");
        }
        if (target != null) {
            if (dtype != null && dtype != target.denseType()) {
                throw new UsageException("--to " + target.cliName() + " and --dtype " + dtype.name().toLowerCase(Locale.ROOT)
                        + " disagree: for a base that is not quantized, --to bf16|f16|f32 is the same as --dtype; give one of them");
            }
            dtype = target.denseType();
        }
    }

    private void collectShapes() {
        for (TensorInfo t : base.tensors().values()) {
            shapes.put(t.name(), t.shape());
        }
        for (QuantizedWeight q : quant.weights().values()) {
            shapes.put(q.weightName(), q.shape()); // the weight's own shape, not that of its packed codes
        }
        if (tied) {
            shapes.put(LM_HEAD, base.tensor(embedName).shape());
        }
    }

    private KeyGroups groupKeys() {
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
        return new KeyGroups(modules, replacements);
    }

    /**
     * Base tensors the adapter replaces (base_layer weights, modules_to_save, biases): checked and
     * recorded with their new shapes. Returns the resized vocabulary, or null.
     */
    private Long planReplacements(Map<String, AdapterKey> replacements) {
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
        return newVocab;
    }

    /**
     * Tied embeddings (docs/FORMATS.md §7): an identical delta on the embedding and lm_head is
     * applied once to the shared tensor; otherwise lm_head is untied. Returns true when it is.
     */
    private boolean resolveTiedEmbeddings() throws IOException {
        Ops headOps = tied ? ops.remove(LM_HEAD) : null;
        if (headOps == null || headOps.isEmpty()) {
            return false;
        }
        Ops embedOps = ops.get(embedName);
        if (embedOps != null && sameDelta(embedOps, headOps, shapes.get(embedName))) {
            notes.add("tied embeddings: " + embedName + " and lm_head carry the same delta; applied once to the shared tensor, which stays tied");
            for (String key : headOps.keys) {
                keyUse.put(key, embedName);
            }
            return false;
        }
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
        return true;
    }

    /** The output tensors in base order, each quantized weight as its group's one output; an untied lm_head last. */
    private List<OutputTensor> outputTensors(boolean untie) {
        List<OutputTensor> outputs = new ArrayList<>();
        Map<String, QuantizedWeight> groupOf = new LinkedHashMap<>();
        for (QuantizedWeight q : quant.weights().values()) {
            q.tensorNames().forEach(n -> groupOf.put(n, q));
        }
        int requantized = 0;
        int dequantized = 0;
        for (TensorInfo t : base.tensors().values()) {
            QuantizedWeight group = groupOf.get(t.name());
            if (group == null) {
                outputs.add(output(t.name(), new TensorSource(base.fileOf(t.name()), t), ops.get(t.name())));
                continue;
            }
            Ops o = ops.get(group.weightName());
            boolean adapted = o != null && !o.isEmpty();
            if (!to.isDense() && !crossFormat && !adapted) {
                // an untouched quantized weight keeps its bytes, as PEFT's merge leaves unadapted layers alone:
                // requantizing it would only move it
                outputs.add(OutputTensor.copy(t.name(), new TensorSource(base.fileOf(t.name()), t)));
            } else if (t.name().equals(group.tensorNames().get(0))) {
                // in the place of its first stored tensor: P.weight itself (NF4, FP8) or P.qweight (GPTQ, AWQ)
                outputs.add(quantizedOutput(group, adapted ? o : null));
                if (to.isDense()) {
                    dequantized++;
                } else {
                    requantized++;
                }
            }
            // the group's other tensors are written with the requantized weight, or dropped when it is written dense
        }
        String format = quant.isQuantized() ? quant.format().name() : "";
        if (requantized > 0 && crossFormat) {
            notes.add(requantized + " " + format + " weights dequantized, merged where the adapter changes them, and quantized to NF4 "
                    + "(blocksize " + CROSS_NF4_BLOCKSIZE + "); config.json's quantization_config is bitsandbytes' now");
        } else if (requantized > 0) {
            notes.add(requantized + " of " + quant.weights().size() + " quantized weights merged and requantized to " + format
                    + " with their own settings; the other " + (quant.weights().size() - requantized) + " keep their bytes");
        }
        if (dequantized > 0) {
            notes.add(dequantized + " quantized weights dequantized to " + to.denseType() + " (merged into the dequantized " + format
                    + " values); config.json loses quantization_config");
        }
        if (untie) {
            TensorInfo embed = base.tensor(embedName);
            outputs.add(output(LM_HEAD, new TensorSource(base.fileOf(embedName), embed), ops.get(LM_HEAD)).withNote("untied from " + embedName));
        }
        return outputs;
    }

    /** Records which output tensor every adapter key went into; a key left over is a bug. */
    private void placeKeys() {
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

    /** One module's LoRA pair, DoRA magnitude, bias term and token rows: checked, and added to the ops of their tensors. */
    private void planModule(String module, Parts parts) {
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
            if (config.hasTargetRule() && !config.targets(module) && !targetedThroughTying(module)) {
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
    private boolean targetedThroughTying(String module) {
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
            TermSpec x = embed.terms.get(i);
            TermSpec y = head.terms.get(i);
            if (x.scale() != y.scale() || x.factorRank() != y.factorRank()) {
                return false;
            }
            // the same ΔW value for value: the same U and Vᵀ, whatever the layouts they are stored in
            double[][] fx = x.factors(shape[0], shape[1]);
            double[][] fy = y.factors(shape[0], shape[1]);
            if (!Arrays.equals(fx[0], fy[0]) || !Arrays.equals(fx[1], fy[1])) {
                return false;
            }
        }
        return true;
    }

    /**
     * The output of a quantized weight that is dequantized ({@code --to bf16/f16/f32}) or merged
     * and requantized (its own format, or NF4 from GPTQ/AWQ). Its base value is the dequantized
     * weight in its own dtype (see {@link TensorSource}); the merge adds ΔW to it exactly and rounds
     * once, to the target dtype, or for a requantized output to the weight's own dtype, which is
     * then requantized. {@code o} is null when the adapter leaves the weight alone.
     */
    private OutputTensor quantizedOutput(QuantizedWeight q, Ops o) {
        if (o != null && (o.replacement != null || o.tokens != null)) {
            throw new IllegalStateException(q.weightName() + " is a quantized weight and cannot be replaced or take token rows");
        }
        TensorSource src = TensorSource.dequantized(q);
        OutputTensor.Update update = o == null ? OutputTensor.Update.NONE : o.update();
        if (to.isDense()) {
            return OutputTensor.dequantize(q.weightName(), to.denseType(), src, update);
        }
        QuantizedOutput out = crossFormat ? Nf4Output.forDense(q.dtype(), q.shape(), CROSS_NF4_BLOCKSIZE, false) : q.requantizedOutput();
        for (String w : out.warnings()) {
            warnings.add(q.weightName() + " " + w);
        }
        return OutputTensor.requantize(q.weightName(), src, update, out);
    }

    private OutputTensor output(String name, TensorSource baseSource, Ops o) {
        TensorInfo info = baseSource.info();
        DType outType = info.dtype();
        if (dtype != null && info.dtype().isMergeable()) {
            outType = dtype;
        }
        if (o == null || o.isEmpty()) {
            return outType == info.dtype() ? OutputTensor.copy(name, baseSource) : OutputTensor.convert(name, outType, baseSource);
        }
        if (!info.dtype().isMergeable() && (!o.terms.isEmpty() || o.dora != null || o.tokens != null)) {
            throw new IllegalStateException(name + " is " + info.dtype() + " and cannot take LoRA terms");
        }
        return o.replacement != null ? OutputTensor.replace(name, outType, o.replacement, o.update())
                : OutputTensor.merge(name, outType, baseSource, o.update());
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
        boolean dequantize = quant.isQuantized() && to.isDense();
        // the model's dtype: --dtype when given, else that of the dequantized weights, which are most of the model
        DType modelType = dtype != null ? dtype : dequantize ? to.denseType() : null;
        if (base.config() == null) {
            if (newVocab != null || untie || modelType != null) {
                warnings.add("the base has no config.json, so the vocabulary size, tie_word_embeddings or dtype change is not recorded anywhere");
            }
            return null;
        }
        ObjectNode c = base.config().deepCopy();
        if (dequantize) {
            // docs/FORMATS.md §5: a dequantized output must drop quantization_config, or transformers would load dense weights as 4-bit
            c.remove(quant.configKey());
        } else if (crossFormat) {
            // the weights are bitsandbytes NF4 now: transformers must load them with bitsandbytes' config
            c.set(quant.configKey(), Bnb4BitConfig.toJson(false, quant.weights().values().iterator().next().dtype()));
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
