package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.errors.MessageGroups;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Bnb4BitConfig;
import org.loramerge.quant.Fp8Config;
import org.loramerge.quant.Fp8Output;
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
    private final List<LoraAdapter> adapters;
    /** How the adapters combine (the SVD methods' rank resolved); null for the merge of one adapter. */
    private Combination combination;
    /** True when the combination is written as a new adapter ({@code combine}) rather than merged. */
    private final boolean adapterOutput;
    /** The adapter being planned, its position and its config. */
    private LoraAdapter adapter;
    private int adapterIndex;
    private AdapterConfig config;
    private final PlanOptions options;
    /** Problems, grouped by kind so that one wrong adapter does not print a line per module. */
    private final MessageGroups problems = new MessageGroups();
    private AdapterException.Reason firstReason;
    private LoraAdapter firstProblemAdapter;
    private final List<String> warnings = new ArrayList<>();
    /** Warnings that repeat per module, added to {@link #warnings} one line per kind at the end of planning. */
    private final MessageGroups moduleWarnings = new MessageGroups();
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
    /** The output tensor's name to the work the adapter (or the combination) asks on it, in adapter order. */
    private Map<String, Ops> ops = new LinkedHashMap<>();
    /** Every base tensor's shape by name, as the adapter sees it (a quantized weight's own shape, a tied lm_head, replacements). */
    private final Map<String, long[]> shapes = new LinkedHashMap<>();
    private String embedName;
    private boolean tied;
    /** The vocabulary size an adapter resized to, or null. */
    private Long newVocab;
    /** Where the checkpoint stores the parameters target_parameters adapts (MoE experts). */
    private ExpertParameters experts;
    /** The names the adapters use for the base's tensors (transformers' loaded names of a vision-language checkpoint). */
    private LoadedNames names = LoadedNames.none();
    /** The output head's name in this checkpoint: lm_head.weight, or where the checkpoint's layout puts it. */
    private String lmHead = LM_HEAD;
    /**
     * Per adapter, its keys with the module or tensor each is for named as the checkpoint names it ({@link LoadedNames}):
     * PEFT saves the names transformers gives a vision-language checkpoint's tensors once loaded.
     */
    private final List<List<AdapterKey>> storedKeys = new ArrayList<>();
    /** Per adapter, whether it names the base's tensors by their loaded names (PEFT under transformers 5) rather than the checkpoint's. */
    private boolean[] loadedNamed;

    /** The work on one output tensor, gathered from the adapter keys. */
    private static final class Ops {
        TensorSource replacement;
        final List<TermSpec> terms = new ArrayList<>();
        DoraSpec dora;
        TokenRows tokens;
        CombinedUpdate combined;
        /** The terms are MoE experts' slices of a fused expert stack [E, d1, d2], seen as [E·d1, d2]. */
        boolean expertRows;
        /** Some terms are LoRA on a parameter (target_parameters: PEFT's ParamWrapper), not on a module. */
        boolean onParameter;
        final List<String> keys = new ArrayList<>();

        boolean isEmpty() {
            return replacement == null && terms.isEmpty() && dora == null && tokens == null && combined == null;
        }

        OutputTensor.Update update() {
            return new OutputTensor.Update(terms, dora, tokens, combined);
        }
    }

    /** The LoRA parts of one module. */
    private static final class Parts {
        final Map<AdapterKey.Kind, AdapterKey> byKind = new LinkedHashMap<>();
    }

    /** The adapter's keys grouped: LoRA parts by module, and whole tensors it replaces by target name. */
    private record KeyGroups(Map<String, Parts> modules, Map<String, AdapterKey> replacements) {
    }

    private Planner(Checkpoint base, List<LoraAdapter> adapters, PlanOptions options, Combination combination, boolean adapterOutput) {
        this.base = base;
        this.adapters = List.copyOf(adapters);
        this.combination = combination;
        this.adapterOutput = adapterOutput;
        this.options = options;
        select(0);
        if (combination != null && combination.method().operand() == CombineMethod.Operand.SVD && combination.rank() == 0) {
            int r = 0;
            for (LoraAdapter a : adapters) {
                r = Math.max(r, a.config().maxRank()); // peft: svd_rank or max(adapters_ranks)
            }
            this.combination = combination.withRank(r);
        }
    }

    private void select(int i) {
        adapterIndex = i;
        adapter = adapters.get(i);
        config = adapter.config();
    }

    /**
     * Plans the merge. A base with quantized weights (bitsandbytes NF4) needs {@code options.to()};
     * for any other base {@code to} bf16/f16/f32 means the same as {@code dtype}.
     *
     * @throws QuantException when the base has quantized weights loramerge cannot read (FP4, 8-bit, incomplete groups)
     * @throws UsageException when {@code to} is missing for a quantized base, or does not apply to this one
     * @throws SafetensorsException when a tokenizer file of the adapter folder breaks the folder's rules (a link out of it, not a regular file)
     */
    public static MergePlan plan(Checkpoint base, LoraAdapter adapter, PlanOptions options)
            throws AdapterException, IOException, QuantException, UsageException, SafetensorsException {
        try {
            return new Planner(base, List.of(adapter), options, null, false).build();
        } catch (CombineException e) {
            throw new IllegalStateException("one adapter is never combined", e);
        }
    }

    /**
     * Plans the merge of several adapters combined by {@code combination} (docs/FORMATS.md §8):
     * each adapter is planned and checked against the base as a single merge would, then the
     * updates of every tensor are combined. {@code combination.weights()} has one weight per adapter.
     *
     * @throws CombineException when the adapters cannot be combined as asked (DoRA, unequal ranks
     *                          for a method that needs equal ones, replaced tensors that differ, ...)
     */
    public static MergePlan plan(Checkpoint base, List<LoraAdapter> adapters, PlanOptions options, Combination combination)
            throws AdapterException, CombineException, IOException, QuantException, UsageException, SafetensorsException {
        if (adapters.isEmpty() || combination.weights().size() != adapters.size()) {
            throw new IllegalArgumentException("one weight per adapter, and at least one adapter");
        }
        return new Planner(base, adapters, options, combination, false).build();
    }

    /**
     * Plans {@code combine}: the adapters checked against the base as for a merge, and the new
     * adapter PEFT's add_weighted_adapter would make of them (docs/FORMATS.md §8): one combined
     * update per module, the new rank, and the new adapter_config.json. The base is only read for
     * shapes; a 4-bit base is fine.
     *
     * @throws CombineException when the adapters cannot be combined into one adapter (DoRA,
     *                          lora_bias, token rows, tensors they replace, unequal ranks where
     *                          the method needs equal ones, ...)
     */
    public static AdapterPlan planAdapter(Checkpoint base, List<LoraAdapter> adapters, Combination combination)
            throws AdapterException, CombineException, IOException, QuantException, UsageException {
        if (adapters.isEmpty() || combination.weights().size() != adapters.size() || !combination.method().isLowRank()) {
            throw new IllegalArgumentException("one weight per adapter, at least one adapter, and a method with a low-rank result");
        }
        Planner p = new Planner(base, adapters, PlanOptions.defaults(), combination, true);
        p.prepare();
        List<Map<String, Ops>> perAdapter = p.planAdapters();
        p.ops = p.combine(perAdapter);
        return p.adapterPlan(perAdapter);
    }

    private MergePlan build() throws AdapterException, CombineException, IOException, QuantException, UsageException, SafetensorsException {
        prepare();
        List<Map<String, Ops>> perAdapter = planAdapters();
        ops = combination == null ? perAdapter.get(0) : combine(perAdapter);
        boolean untie = resolveTiedEmbeddings();
        failOnProblems(); // the tied embeddings' own (a resized one without its untrained copy)
        List<OutputTensor> outputs = outputTensors(untie);
        for (int i = 0; i < adapters.size(); i++) {
            select(i);
            placeKeys(perAdapter.get(i));
        }
        warnings.addAll(moduleWarnings.lines());
        return new MergePlan(outputs, assignShards(outputs, options.maxShardSize()), updatedConfig(newVocab, untie), filesToCarry(), keyUse,
                warnings, notes, Provenance.of(base, adapters, combination));
    }

    /** The base's side: its warnings, quantized weights and what they become, embeddings, shapes. */
    private void prepare() throws IOException, QuantException, UsageException {
        warnings.addAll(base.warnings());
        for (LoraAdapter a : adapters) {
            for (String w : a.config().warnings()) {
                warnings.add(adapters.size() > 1 ? a.dir() + ": " + w : w);
            }
        }
        quant = WeightFormats.detect(base);
        if (!adapterOutput) {
            settleTarget();
        }
        warnings.addAll(quant.warnings());
        names = LoadedNames.of(base);
        lmHead = names.stored(LM_HEAD);
        loadedNamed = new boolean[adapters.size()];
        for (int i = 0; i < adapters.size(); i++) {
            List<AdapterKey> keys = new ArrayList<>();
            for (AdapterKey k : adapters.get(i).keys().values()) {
                String stored = names.stored(k.module());
                keys.add(stored.equals(k.module()) ? k : new AdapterKey(k.kind(), stored, k.key()));
                loadedNamed[i] |= !stored.equals(k.module());
            }
            storedKeys.add(keys);
        }
        embedName = findEmbedding(base);
        boolean tieFlag = base.config() == null || base.config().path("tie_word_embeddings").asBoolean(true);
        tied = tieFlag && embedName != null && base.tensor(lmHead) == null;
        collectShapes();
        experts = new ExpertParameters(base.modelType(), base.config(), shapes);
    }

    /** Each adapter planned against the base on its own: the work it asks on every tensor, in adapter order. */
    private List<Map<String, Ops>> planAdapters() throws AdapterException, IOException {
        List<Map<String, Ops>> perAdapter = new ArrayList<>();
        for (int i = 0; i < adapters.size(); i++) {
            select(i);
            ops = new LinkedHashMap<>();
            if (combination != null && config.useDora()) {
                problem(UNSUPPORTED, "adapter_config.json has use_dora: true. DoRA adapters cannot be combined: each carries magnitude "
                        + "vectors for its own ΔW, and no combination of them is the magnitude of the combined ΔW (PEFT's "
                        + "add_weighted_adapter re-initialises them from the base instead). Merge this adapter on its own");
            }
            KeyGroups keys = groupKeys();
            Long v = planReplacements(keys.replacements());
            if (v != null) {
                newVocab = v;
            }
            for (Map.Entry<String, Parts> e : keys.modules().entrySet()) {
                if (!planParameter(e.getKey(), e.getValue())) {
                    planModule(e.getKey(), e.getValue());
                }
            }
            perAdapter.add(ops);
        }
        failOnProblems();
        if (newVocab != null) {
            notes.add("vocabulary resized to " + newVocab + " rows by the adapter; config.json vocab_size follows");
        }
        if (IntStream.range(0, loadedNamed.length).anyMatch(i -> loadedNamed[i])) {
            notes.add("the adapter names the base's tensors as transformers loads this " + base.modelType() + " checkpoint (" + names.example()
                    + "); they are matched to the checkpoint's names" + (adapterOutput ? "" : ", which the merge writes, as save_pretrained does"));
        }
        return perAdapter;
    }

    /** Throws the problems recorded so far, all of them in one message, if there are any. */
    private void failOnProblems() throws AdapterException {
        if (!problems.isEmpty()) {
            throw new AdapterException(firstReason, firstProblemAdapter.dir(), "cannot merge; nothing was written:\n  - "
                    + String.join("\n  - ", problems.lines()));
        }
    }

    /** Quantizations whose weights loramerge requantizes with their own format and settings ({@code --to <kind>}). */
    static final Set<String> REQUANTIZABLE = Set.of("nf4", "fp4", "fp8", "int8");
    /** Quantizations that need calibration data to requantize: refused as targets, with the alternatives. */
    static final Set<String> CALIBRATED = Set.of("gptq", "awq");
    /** NF4 settings of a GPTQ or AWQ base requantized to NF4: bitsandbytes' and transformers' defaults. */
    static final int CROSS_NF4_BLOCKSIZE = 64;

    /**
     * The one place that decides what {@code --to} means: required for a base with quantized
     * weights (dense, or requantized into the base's own format, or NF4 or FP8 from GPTQ/AWQ), refused as a
     * quantized target for a base without, and the same as {@code --dtype} there otherwise.
     */
    private void settleTarget() throws UsageException, QuantException {
        dtype = options.dtype();
        QuantTarget target = options.to();
        if (quant.isQuantized()) {
            kind = quant.weights().values().iterator().next().kind();
            String format = quant.formatName();
            boolean calibrated = CALIBRATED.contains(kind);
            if (target == null) {
                String requant = calibrated
                        ? "  --to nf4: dequantize, merge, quantize to bitsandbytes NF4 (blocksize " + CROSS_NF4_BLOCKSIZE + "): a 4-bit model "
                                + "that needs no calibration, in which part of the change is rounded away; the merge reports how much survives\n"
                                + "  --to fp8: dequantize, merge, quantize to FP8 e4m3 with a scale per " + Fp8Output.BLOCK + "x" + Fp8Output.BLOCK
                                + " block (transformers' fine-grained FP8): an 8-bit model that needs no calibration; the merge reports how "
                                + "much of the change survives\n"
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
                        + (calibrated ? ", or --to nf4 (4-bit) or --to fp8 (8-bit) for a model that needs no calibration" : "")
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
            if (calibrated && target == QuantTarget.FP8) {
                List<QuantizedWeight> undivided = quant.weights().values().stream().filter(q -> Fp8Output.whyNotBlocks(q.shape()).isPresent())
                        .collect(Collectors.toList());
                if (!undivided.isEmpty()) {
                    QuantizedWeight q = undivided.get(0);
                    throw new QuantException(QuantException.Reason.UNSUPPORTED_CONFIG, q.file().path(), q.weightName(),
                            Fp8Output.whyNotBlocks(q.shape()).get() + (undivided.size() > 1 ? ", nor " + (undivided.size() - 1) + " other of the "
                                    + quant.weights().size() + " quantized weights" : "") + "; --to fp8 writes transformers' fine-grained FP8, "
                                    + "whose " + Fp8Output.BLOCK + "x" + Fp8Output.BLOCK + " blocks must divide every quantized weight: merge --to "
                                    + "bf16 (or f16, f32) for a dense model, or --to nf4 for a 4-bit one");
                }
                crossFormat = true;
                return;
            }
            throw new UsageException("--to " + target.cliName() + " writes " + target.name() + " weights, but " + base.dir() + " holds "
                    + format + " weights; " + (REQUANTIZABLE.contains(kind) ? "--to " + kind + " requantizes them with their own settings, " : "")
                    + (calibrated ? "--to nf4 and --to fp8 quantize them to NF4 or FP8, " : "") + "--to bf16 (or f16, f32) writes them dense");
        }
        if (target != null && !target.isDense()) {
            throw new UsageException("--to " + target.cliName() + " merges into a quantized base and requantizes, but " + base.dir()
                    + " has no quantized weights; merge without --to, then run `loramerge quantize` on the result for an NF4 model");
        }
        if (target != null) {
            if (dtype != null && dtype != target.denseType()) {
                throw new UsageException("--to " + target.cliName() + " and --dtype " + dtype.name().toLowerCase(Locale.ROOT)
                        + " disagree: " + base.dir() + " is not quantized, and for such a base --to bf16|f16|f32 is the same as --dtype; "
                        + "give one of them");
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
            shapes.put(lmHead, base.tensor(embedName).shape());
        }
    }

    /**
     * The keys of the adapter being planned, named as the checkpoint names the base's tensors; adapter_config.json's
     * rules are matched against the adapter's own names ({@link #peftName}).
     */
    private List<AdapterKey> storedKeys() {
        return storedKeys.get(adapterIndex);
    }

    /**
     * The name the adapter being planned, and its adapter_config.json, know a base module or tensor by: the loaded
     * name of the checkpoint's where the adapter uses loaded names, the checkpoint's own where it uses those (an
     * adapter saved by PEFT under transformers 4, whose loaded names were the checkpoint's).
     */
    private String peftName(String module) {
        return loadedNamed[adapterIndex] ? names.loaded(module) : module;
    }

    private KeyGroups groupKeys() {
        Map<String, Parts> modules = new LinkedHashMap<>();
        Map<String, AdapterKey> replacements = new LinkedHashMap<>();
        for (AdapterKey k : storedKeys()) {
            if (k.kind() == AdapterKey.Kind.ORIGINAL_MODULE) {
                keyUse.put(keyName(k.key()), "(PEFT's copy of the original " + k.module() + "; not used by a merge)");
            } else if (k.kind() == AdapterKey.Kind.REPLACE || k.kind() == AdapterKey.Kind.MODULES_TO_SAVE) {
                AdapterKey previous = replacements.get(k.module());
                if (previous == null) {
                    replacements.put(k.module(), k);
                } else if (previous.kind() != k.kind()) {
                    // M.weight and M.modules_to_save.weight: PEFT writes both, the same trained values; its loader reads
                    // M.weight into the trained copy and ignores the other, wherever either stands in the file
                    AdapterKey trained = k.kind() == AdapterKey.Kind.REPLACE ? k : previous;
                    AdapterKey plain = trained == k ? previous : k;
                    replacements.put(k.module(), trained);
                    keyUse.put(keyName(plain.key()), "(same module as " + trained.key() + ", which is used)");
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
                boolean vocabTensor = target.equals(embedName) || target.equals(lmHead);
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
            DType baseType = target.equals(lmHead) && tied ? base.tensor(embedName).dtype() : base.tensor(target).dtype();
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
     * The updates of every tensor combined (docs/FORMATS.md §8). An exact method (cat,
     * task_arithmetic) gives each adapter's terms with its weight folded into the scale; any other
     * gives one {@link CombinedUpdate} per tensor. A tensor several adapters replace must be
     * replaced by the same values in each (as the embedding's base_layer copy is); token rows,
     * and lora_bias outside the exact methods, cannot be combined.
     */
    private Map<String, Ops> combine(List<Map<String, Ops>> perAdapter) throws IOException, CombineException {
        Map<String, Ops> out = new LinkedHashMap<>();
        List<String> names = new ArrayList<>();
        for (Map<String, Ops> m : perAdapter) {
            for (String n : m.keySet()) {
                if (!names.contains(n)) {
                    names.add(n);
                }
            }
        }
        CombineMethod method = combination.method();
        for (String name : names) {
            Ops c = new Ops();
            List<CombinedUpdate.Part> parts = new ArrayList<>();
            int replacedBy = -1;
            for (int i = 0; i < perAdapter.size(); i++) {
                Ops o = perAdapter.get(i).get(name);
                if (o == null) {
                    continue;
                }
                String who = "adapter " + i + " (" + adapters.get(i).dir() + ")";
                if (o.tokens != null) {
                    throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " replaces rows of " + name
                            + " (trainable_token_indices); token rows cannot be combined with other adapters (PEFT's "
                            + "add_weighted_adapter drops them). Merge that adapter on its own");
                }
                if (o.onParameter && (adapterOutput || !method.isExact())) {
                    throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " has LoRA on parameters of " + name
                            + " (adapter_config.json target_parameters, such as MoE experts), whose factors hold every expert's; "
                            + (adapterOutput ? "a combined adapter cannot carry them. Merge with merge --combine cat or task_arithmetic"
                                    : method.cliName() + " cannot combine them (only cat and task_arithmetic, which add every "
                                    + "expert's term exactly, can). Use one of those, or merge that adapter on its own"));
                }
                c.expertRows |= o.expertRows;
                c.onParameter |= o.onParameter;
                if (o.replacement != null && adapterOutput) {
                    if (!sameValues(o.replacement, baseSource(name))) {
                        throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " replaces " + name + " with its own values "
                                + "(modules_to_save, a resized vocabulary or bias=\"all\"); a combined adapter cannot carry that. Merge "
                                + "that adapter into the base first and combine the others on its output");
                    }
                } else if (o.replacement != null) {
                    if (c.replacement == null) {
                        c.replacement = o.replacement;
                        replacedBy = i;
                    } else if (!sameValues(c.replacement, o.replacement)) {
                        throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " and adapter " + replacedBy + " replace " + name
                                + " with different values (modules_to_save, a resized vocabulary or bias=\"all\"); which one would be "
                                + "the base of the combination is not defined. Merge one of them first and combine the others on its output");
                    }
                }
                for (TermSpec t : o.terms) {
                    if (t.layout() == Layout.BIAS && adapterOutput) {
                        throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " has lora_bias (" + t.module()
                                + ".lora_B.bias), which a combined adapter cannot carry (PEFT's add_weighted_adapter drops it). Merge with "
                                + "merge --combine cat or task_arithmetic, which add it exactly");
                    }
                    if (t.layout() == Layout.BIAS && !method.isExact()) {
                        throw new CombineException(CombineException.Reason.UNSUPPORTED, who + " has lora_bias (" + t.module()
                                + ".lora_B.bias); " + method.cliName() + " cannot combine it (only cat and task_arithmetic, which add "
                                + "every term exactly, can). Use one of those, or merge that adapter on its own");
                    }
                    if (method.isExact() && !adapterOutput) {
                        double w = combination.weight(i);
                        double factor = method == CombineMethod.TASK_ARITHMETIC ? combination.lambda() * w : w;
                        c.terms.add(t.withScale(factor * t.scale())); // (λ·w)·s in double, as PEFT's w·s (docs/FORMATS.md §8)
                    } else {
                        parts.add(new CombinedUpdate.Part(i, t, combination.weight(i)));
                    }
                }
            }
            if (!parts.isEmpty()) {
                checkParts(name, parts);
                c.combined = new CombinedUpdate(combination, name, parts.get(0).term().module(), parts);
            }
            out.put(name, c);
        }
        reportDisjointAdapters(perAdapter);
        notes.add("combined " + adapters.size() + " adapters with " + combination.describe());
        return out;
    }

    /** The parts of one tensor: one layout, and equal ranks where the method needs them (PEFT's check). */
    private void checkParts(String name, List<CombinedUpdate.Part> parts) throws CombineException {
        Layout layout = parts.get(0).term().layout();
        int rank = parts.get(0).term().rank();
        for (CombinedUpdate.Part p : parts) {
            if (p.term().layout() != layout) {
                throw new CombineException(CombineException.Reason.UNSUPPORTED, "adapter " + p.adapter() + " has " + p.term().module()
                        + " as a " + p.term().layout().name().toLowerCase(Locale.ROOT) + " layer but adapter " + parts.get(0).adapter()
                        + " as a " + layout.name().toLowerCase(Locale.ROOT) + " layer (fan_in_fan_out differs); re-save one of them");
            }
            if (combination.method().needsEqualRanks() && p.term().rank() != rank) {
                List<String> ranks = new ArrayList<>();
                for (CombinedUpdate.Part q : parts) {
                    ranks.add("adapter " + q.adapter() + " rank " + q.term().rank());
                }
                throw new CombineException(CombineException.Reason.UNEQUAL_RANKS, combination.method().cliName() + " combines the A and B "
                        + "factors element by element, so every adapter of a module needs the same rank, but " + p.term().module() + " has "
                        + String.join(", ", ranks) + ". Use cat (exact, rank the sum), svd (--rank R) or task_arithmetic instead");
            }
        }
    }

    /** A warning for every adapter that changes no tensor another adapter changes (allowed, but likely not what was meant). */
    private void reportDisjointAdapters(List<Map<String, Ops>> perAdapter) {
        if (perAdapter.size() < 2) {
            return;
        }
        for (int i = 0; i < perAdapter.size(); i++) {
            boolean shared = false;
            for (String n : perAdapter.get(i).keySet()) {
                for (int j = 0; j < perAdapter.size() && !shared; j++) {
                    shared = j != i && perAdapter.get(j).containsKey(n);
                }
            }
            if (!shared) {
                warnings.add("adapter " + i + " (" + adapters.get(i).dir() + ") targets nothing any other adapter targets ("
                        + String.join(", ", perAdapter.get(i).keySet()) + "): its update is applied on its own, with weight "
                        + combination.weight(i));
            }
        }
    }

    /** True when two tensors of the adapters hold the same dtype, shape and bytes. */
    private static boolean sameValues(TensorSource x, TensorSource y) throws IOException {
        if (x.dtype() != y.dtype() || !Arrays.equals(x.info().shape(), y.info().shape())) {
            return false;
        }
        return x.file().readAll(x.info()).equals(y.file().readAll(y.info()));
    }

    /** The base tensor {@code name} as a source (a tied lm_head reads the embedding). */
    private TensorSource baseSource(String name) {
        String stored = name.equals(lmHead) && tied ? embedName : name;
        return new TensorSource(base.fileOf(stored), base.tensor(stored));
    }

    /**
     * The new adapter of {@code combine}: one module per tensor with a combined update, its
     * factors' shapes at the new rank, and adapter_config.json as PEFT 0.21 writes it for the
     * combination (adapters[0]'s config with r = lora_alpha = the new rank, the patterns emptied
     * and the targeting rules replaced by the modules written), except that use_rslora is false:
     * PEFT keeps adapters[0]'s, which scales the combination by sqrt(r) (docs/FORMATS.md §8).
     */
    private AdapterPlan adapterPlan(List<Map<String, Ops>> perAdapter) throws IOException, CombineException {
        List<AdapterPlan.Module> modules = new ArrayList<>();
        int rank = 0;
        for (Map.Entry<String, Ops> e : ops.entrySet()) {
            CombinedUpdate u = e.getValue().combined;
            if (u == null) {
                continue; // a replacement equal to the base (an embedding's base_layer copy): nothing to carry
            }
            TermSpec first = u.parts().get(0).term();
            modules.add(new AdapterPlan.Module(names.loaded(u.module()), u, shapes.get(e.getKey()), first.a().info().shape(), first.b().info().shape()));
        }
        if (modules.isEmpty()) {
            throw new CombineException(CombineException.Reason.UNSUPPORTED, "the adapters have no LoRA factors (lora_A/lora_B) to combine; "
                    + "check that these are the adapter folders you meant");
        }
        CombineMethod method = combination.method();
        for (LoraAdapter a : adapters) {
            int r = a.config().maxRank();
            // peft _check_add_weighted_adapter: cat sums the adapters' ranks, the SVD methods default to the largest
            rank = method == CombineMethod.CAT ? rank + r : Math.max(rank, r);
        }
        if (method.operand() == CombineMethod.Operand.SVD && combination.rank() > 0) {
            rank = combination.rank();
        }
        for (AdapterPlan.Module m : modules) {
            rank = Math.max(rank, m.combinedRank(method));
        }
        List<String> targets = new ArrayList<>();
        for (AdapterPlan.Module m : modules) {
            targets.add(m.module());
        }
        Collections.sort(targets);
        ObjectNode cfg = adapters.get(0).config().json();
        cfg.put("r", rank);
        cfg.put("lora_alpha", rank);
        cfg.put("use_rslora", false);
        cfg.putObject("rank_pattern");
        cfg.putObject("alpha_pattern");
        ArrayNode t = cfg.putArray("target_modules");
        targets.forEach(t::add);
        for (String field : new String[] {"exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
                "trainable_token_indices"}) {
            cfg.putNull(field);
        }
        cfg.put("use_dora", false);
        cfg.put("lora_bias", false);
        cfg.put("bias", "none");
        cfg.put("inference_mode", true);
        for (int i = 0; i < adapters.size(); i++) {
            select(i);
            placeKeys(perAdapter.get(i));
        }
        warnings.addAll(moduleWarnings.lines());
        notes.add("new adapter: rank " + rank + " (r = lora_alpha, scale 1), " + modules.size() + " modules");
        return new AdapterPlan(modules, rank, cfg, keyUse, warnings, notes);
    }

    /**
     * Tied embeddings (docs/FORMATS.md §7): an identical delta on the embedding and lm_head is
     * applied once to the shared tensor; otherwise lm_head is untied. Returns true when it is.
     */
    private boolean resolveTiedEmbeddings() throws IOException {
        if (!tied) {
            return false;
        }
        Ops headOps = ops.remove(lmHead);
        Ops embedOps = ops.get(embedName);
        if (headOps == null || headOps.isEmpty()) {
            String embedModule = stripWeight(embedName);
            if (embedOps != null && embedOps.replacement != null && !ensureWeightTying()
                    && adapters.stream().anyMatch(a -> a.config().savesModule(peftName(embedModule)))) {
                // modules_to_save on the embedding: PEFT's merge swaps in the trained copy for the input embedding
                // only, finds the two no longer share their weight, and unties (tuners_utils.py
                // _unload_and_optionally_merge); lm_head keeps the base's values. (A saved base_layer weight of a
                // LoRA on the embedding is the shared weight itself, which stays shared.)
                Ops head = new Ops();
                if (!Arrays.equals(embedOps.replacement.info().shape(), base.tensor(embedName).shape())) {
                    // a resized vocabulary: the head is the resized untrained embedding, which PEFT saved as original_module
                    head.replacement = resizedOriginal(embedOps.replacement.info().shape());
                    if (head.replacement == null) {
                        return false; // recorded as a problem
                    }
                }
                notes.add("tied embeddings: " + embedName + " is replaced (modules_to_save) and lm_head keeps the "
                        + (head.replacement == null ? "base's values" : "untrained values (original_module)")
                        + "; lm_head.weight is written explicitly and config.json gets tie_word_embeddings: false, as PEFT's merge does");
                ops.put(lmHead, head);
                return true;
            }
            return false;
        }
        if (embedOps != null && sameDelta(embedOps, headOps, shapes.get(embedName))) {
            notes.add("tied embeddings: " + embedName + " and lm_head carry the same delta; applied once to the shared tensor, which stays tied");
            for (String key : headOps.keys) {
                keyUse.put(key, embedName);
            }
            headOps.keys.clear();
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
        ops.put(lmHead, headOps);
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
        String format = quant.isQuantized() ? quant.formatName() : "";
        if (requantized > 0 && crossFormat && to == QuantTarget.FP8) {
            notes.add(requantized + " " + format + " weights dequantized, merged where the adapter changes them, and quantized to FP8 e4m3 "
                    + "(a scale per " + Fp8Output.BLOCK + "x" + Fp8Output.BLOCK + " block); config.json's quantization_config is "
                    + "transformers' fine-grained FP8 now");
        } else if (requantized > 0 && crossFormat) {
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
            outputs.add(output(lmHead, new TensorSource(base.fileOf(embedName), embed), ops.get(lmHead)).withNote("untied from " + embedName));
        }
        return outputs;
    }

    /**
     * Records which output tensor every key of the current adapter went into ({@code adapterOps}:
     * what was planned for it); a key left over is a bug. With several adapters each key is
     * prefixed with its adapter's position, [0], [1], ...
     */
    private void placeKeys(Map<String, Ops> adapterOps) {
        for (Map.Entry<String, Ops> e : adapterOps.entrySet()) {
            String outName = e.getKey();
            if (!ops.containsKey(outName) && ops.containsKey(embedName) && outName.equals(lmHead)) {
                outName = embedName; // a tied lm_head whose delta went into the shared tensor
            }
            for (String key : e.getValue().keys) {
                keyUse.putIfAbsent(keyName(key), outName);
            }
        }
        for (String key : adapter.keys().keySet()) {
            if (!keyUse.containsKey(keyName(key))) {
                throw new IllegalStateException("adapter key " + key + " was not placed; this is a loramerge bug");
            }
        }
    }

    /** An adapter key as the plan reports it: as it is, or with its adapter's position when there are several. */
    private String keyName(String key) {
        return adapters.size() > 1 ? "[" + adapterIndex + "] " + key : key;
    }

    /**
     * The files the output carries: the base folder's ({@link Checkpoint#nonWeightFiles()}, which never
     * holds an adapter's files), with the tokenizer files saved in the adapter folder in their place
     * ({@link CarriedFiles}; never the base's README.md, since the merge writes a model card). When
     * --base and --adapter are one folder its README is the adapter's model card (PEFT's save_pretrained
     * writes one), so it stays behind too, and its tokenizer files are simply the base's. Notes name
     * what stayed behind and what came from the adapter folder.
     */
    private List<Path> filesToCarry() throws IOException, SafetensorsException {
        List<Path> files = new ArrayList<>(base.nonWeightFiles());
        List<String> left = new ArrayList<>(base.adapterFiles());
        boolean oneFolder = false;
        for (LoraAdapter a : adapters) {
            oneFolder |= Files.isSameFile(base.dir(), a.dir());
        }
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
        CarriedFiles.Choice carried = CarriedFiles.choose(files, oneFolder ? null : adapter.folder());
        if (carried.note() != null) {
            notes.add(carried.note());
        }
        if (!left.isEmpty()) {
            notes.add("not carried into the output: " + String.join(", ", left) + (oneFolder
                    ? " (--base and --adapter are the same folder: these describe the adapter, and loaders would take the merged model for one)"
                    : " (an adapter's files never go into a merged model)"));
        }
        return carried.files();
    }

    /**
     * Records a problem; the merge stops after planning, naming all of them, with the first one's
     * reason. A problem found again (the keys of two parameters of one experts module meet the same
     * unmappable module) is listed once.
     */
    private void problem(AdapterException.Reason reason, String message) {
        problem(reason, message, message, message);
    }

    /** A problem of a kind that can repeat for many modules: one line per kind, with the count and the first few subjects. */
    private void problem(AdapterException.Reason reason, String kind, String subject, String message) {
        if (firstReason == null) {
            firstReason = reason;
            firstProblemAdapter = adapter;
        }
        String of = adapters.size() > 1 ? "adapter " + adapterIndex + " (" + adapter.dir() + "): " : "";
        problems.add(of + kind, subject, of + message);
    }

    /**
     * LoRA on a parameter (target_parameters, FORMATS.md §9): PEFT's ParamWrapper on {@code M.p}
     * saves its pair under M, and a second parameter of the same module wraps the first, so the
     * first's keys are under {@code M.base_layer} (the k-th of n targeted parameters, in the
     * module's registration order, under n − 1 − k of them). The parameter is found in the
     * checkpoint's own form (per expert, or fused), and each checkpoint tensor that holds part of it
     * gets one term per expert. Returns false when {@code keyModule} is not a ParamWrapper's, to be
     * planned as a module.
     */
    private boolean planParameter(String keyModule, Parts parts) {
        String module = keyModule;
        int depth = 0;
        while (module.endsWith(".base_layer")) {
            module = module.substring(0, module.length() - ".base_layer".length());
            depth++;
        }
        List<String> keys = new ArrayList<>();
        parts.byKind.values().forEach(k -> keys.add(k.key()));
        List<String> candidates = ExpertParameters.selected(config, peftName(module));
        if (candidates.isEmpty()) {
            if (depth > 0) {
                problem(CONFIG_MISMATCH, "adapter keys " + String.join(", ", keys) + " have the form of LoRA on a second parameter of "
                        + module + " (PEFT's nested ParamWrapper), but adapter_config.json's target_parameters selects no parameter of it; "
                        + "fix the config or the adapter");
                return true;
            }
            return false;
        }
        List<String> wrapped;
        try {
            List<String> present = new ArrayList<>();
            for (String p : candidates) {
                if (experts.find(module + "." + p) != null) {
                    present.add(p);
                }
            }
            wrapped = ExpertParameters.wrapped(module, present);
        } catch (ExpertParameters.Unmapped e) {
            problem(e.reason, e.getMessage());
            return true;
        }
        if (wrapped.isEmpty() && depth == 0) {
            // the base has none of the selected parameters here (a bare entry such as "gate_up_proj" names one of every module): a module's LoRA
            return false;
        }
        if (wrapped.isEmpty()) {
            problem(NO_SUCH_BASE_TENSOR, "adapter keys " + String.join(", ", keys) + " are LoRA on " + module + "." + String.join(" or " + module + ".",
                    candidates) + " (adapter_config.json target_parameters), but the base model stores no such parameter; is this adapter for "
                    + "another model? Pass the base it was trained on (adapter_config.json base_model_name_or_path)");
            return true;
        }
        if (depth >= wrapped.size()) {
            problem(CONFIG_MISMATCH, "adapter keys " + String.join(", ", keys) + " sit under " + depth + " base_layer wrappers, so PEFT wrapped at least "
                    + (depth + 1) + " parameters of " + module + ", but target_parameters selects only " + wrapped.size() + " that the base has ("
                    + String.join(", ", wrapped) + "); the config does not belong to these weights: fix target_parameters in adapter_config.json");
            return true;
        }
        String parameter = module + "." + wrapped.get(wrapped.size() - 1 - depth);
        AdapterKey a = parts.byKind.get(AdapterKey.Kind.LORA_A);
        AdapterKey b = parts.byKind.get(AdapterKey.Kind.LORA_B);
        if (a == null || b == null || parts.byKind.size() != 2) {
            if (a == null || b == null) {
                AdapterKey present = a != null ? a : b != null ? b : parts.byKind.values().iterator().next();
                problem(MISSING_PARTNER, "adapter key " + present.key() + " (LoRA on parameter " + parameter + ") is without its lora_A/lora_B partner");
            } else {
                problem(UNSUPPORTED, "adapter keys " + String.join(", ", keys) + " are for parameter " + parameter + ", on which PEFT's "
                        + "ParamWrapper has only lora_A and lora_B (no DoRA, bias or embedding parts); the adapter was not saved by PEFT");
            }
            return true;
        }
        ExpertParameters.Stored stored;
        try {
            stored = experts.find(parameter);
        } catch (ExpertParameters.Unmapped e) {
            problem(e.reason, e.getMessage());
            return true;
        }
        TensorInfo ta = adapter.tensor(a.key());
        TensorInfo tb = adapter.tensor(b.key());
        if (!ta.dtype().isMergeable() && ta.dtype() != DType.F64 || !tb.dtype().isMergeable() && tb.dtype() != DType.F64) {
            problem(UNSUPPORTED, "LoRA factors of " + parameter + " are " + ta.dtype() + "/" + tb.dtype()
                    + "; quantized adapters are not supported, re-save the adapter in F32, F16 or BF16");
            return true;
        }
        int rank = config.rankFor(peftName(parameter));
        double scale = config.scaleFor(peftName(parameter));
        if (!checkParameterShapes(parameter, stored, ta, tb, rank)) {
            return true;
        }
        List<String> pieceNames = new ArrayList<>();
        stored.pieces().forEach(piece -> pieceNames.add(piece.tensor()));
        for (ExpertParameters.Piece piece : stored.pieces()) {
            if (!floatingPointBase(piece.tensor(), embedName, tied, List.of(a, b))) {
                return true;
            }
        }
        TensorSource sa = new TensorSource(adapter.file(), ta);
        TensorSource sb = new TensorSource(adapter.file(), tb);
        for (ExpertParameters.Piece piece : stored.pieces()) {
            Ops o = ops.computeIfAbsent(piece.tensor(), x -> new Ops());
            o.onParameter = true;
            if (stored.experts() == 0) {
                // a 2-D parameter: ParamWrapper with one expert is lora.Linear's B·A
                o.terms.add(new TermSpec(parameter, Layout.LINEAR, sa, sb, rank, scale));
            } else if (piece.expert() >= 0) {
                o.terms.add(TermSpec.expert(parameter, sa, sb, rank, scale,
                        new ExpertSlice(piece.expert(), stored.experts(), stored.transposed(), piece.firstRow(), 0, piece.rows())));
            } else {
                for (int e = 0; e < stored.experts(); e++) {
                    o.terms.add(TermSpec.expert(parameter, sa, sb, rank, scale,
                            new ExpertSlice(e, stored.experts(), stored.transposed(), 0, e * stored.d1(), stored.d1())));
                }
                o.expertRows = true;
            }
        }
        String into = pieceNames.size() == 1 ? pieceNames.get(0)
                : pieceNames.get(0) + " … " + pieceNames.get(pieceNames.size() - 1) + " (" + pieceNames.size() + " tensors)";
        keyUse.put(keyName(a.key()), into);
        keyUse.put(keyName(b.key()), into);
        return true;
    }

    /**
     * PEFT's ParamWrapper on a parameter [E, d1, d2]: lora_A [r·E, in], lora_B [out, r·E], in and
     * out being d2 and d1, or d1 and d2 for a transposed one; on a 2-D one [d1, d2], lora.Linear's
     * [r, d2] and [d1, r].
     */
    private boolean checkParameterShapes(String parameter, ExpertParameters.Stored p, TensorInfo a, TensorInfo b, int rank) {
        long e = Math.max(1, p.experts());
        long in = p.transposed() ? p.d1() : p.d2();
        long out = p.transposed() ? p.d2() : p.d1();
        String shape = p.experts() == 0 ? "[" + p.d1() + ", " + p.d2() + "]" : "[" + p.experts() + ", " + p.d1() + ", " + p.d2() + "]";
        String where = parameter + " (" + shape + (p.experts() > 0 && p.transposed() ? ", laid out [experts, in, out]" : "")
                + ", lora_A " + TensorInfo.shapeString(a.shape()) + ", lora_B " + TensorInfo.shapeString(b.shape()) + ")";
        if (a.rank() != 2 || b.rank() != 2 || a.dim(0) != b.dim(1)) {
            problem(SHAPE_MISMATCH, "LoRA factors of " + where + " do not fit each other; shape mismatch");
            return false;
        }
        if (a.dim(0) % e != 0 || a.dim(0) / e != rank) {
            problem(CONFIG_MISMATCH, "adapter_config.json gives " + parameter + " rank " + rank + " (r / rank_pattern), so its factors of "
                    + e + " experts should have " + rank * e + " rank rows, but " + where + " has " + a.dim(0)
                    + "; the config does not belong to these weights, or the base has another number of experts: fix r / rank_pattern in "
                    + "adapter_config.json, or pass the base the adapter was trained on");
            return false;
        }
        if (a.dim(1) != in || b.dim(0) != out) {
            problem(SHAPE_MISMATCH, "shape mismatch for " + where + ": expected lora_A [" + rank * e + ", " + in + "] and lora_B [" + out + ", "
                    + rank * e + "]; is this adapter for another model? Pass the base it was trained on (adapter_config.json base_model_name_or_path)");
            return false;
        }
        return true;
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
            problem(NO_SUCH_BASE_TENSOR, "no base tensor", module, "adapter keys " + String.join(", ", keys) + " are for module " + module + ", but the base model has no tensor "
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
            if (config.hasTargetRule() && !config.targets(peftName(module)) && !targetedThroughTying(module)) {
                problem(CONFIG_MISMATCH, "not targeted", module, "adapter keys " + first.key() + " and " + second.key() + " are for module " + module
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
        int rank = config.rankFor(peftName(module));
        double scale = config.scaleFor(peftName(module));
        Layout layout = null;
        if (hasLora) {
            TensorInfo ta = adapter.tensor(a != null ? a.key() : ea.key());
            TensorInfo tb = adapter.tensor(b != null ? b.key() : eb.key());
            if (!ta.dtype().isMergeable() && ta.dtype() != DType.F64 || !tb.dtype().isMergeable() && tb.dtype() != DType.F64) {
                problem(UNSUPPORTED, "quantized factors", module, "LoRA factors of " + module + " are " + ta.dtype() + "/" + tb.dtype()
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
            List<Long> idx = config.tokenIndicesFor(peftName(module), module.equals(stripWeight(embedName)));
            TensorInfo tv = adapter.tensor(tokens.key());
            if (quant.weight(weightName) != null) {
                // token rows replace whole rows of stored values, which a quantized weight does not have (its codes share scales)
                problem(UNSUPPORTED, "adapter key " + tokens.key() + " holds token rows for " + weightName + ", a " + quant.formatName() + " weight of the base; "
                        + "replacing rows of a quantized weight is not supported: pass the original 16-bit model as --base");
            } else if (idx == null) {
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
        String stored = tied && tensorName.equals(lmHead) && base.tensor(lmHead) == null ? embedName : tensorName;
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
        String headModule = stripWeight(lmHead);
        return module.equals(headModule) && config.targets(peftName(embedModule)) || module.equals(embedModule) && config.targets(peftName(headModule));
    }

    /** nn.Linear or GPT-2's Conv1D: decided by the architecture, then by the shapes, then by fan_in_fan_out (as PEFT corrects a wrong flag from the layer type). */
    private Layout linearLayout(String module, long[] w, TensorInfo a, TensorInfo b) {
        if (w.length != 2) {
            return Layout.LINEAR; // Conv1d/2d/3d: flattened like a Linear
        }
        String modelType = base.modelType();
        if (base.usesConv1D() && !module.endsWith("lm_head")) {
            if (!config.fanInFanOut()) {
                moduleWarnings.add("conv1d without fan_in_fan_out", module,
                        module + " is a Conv1D layer of a " + modelType + " model but fan_in_fan_out is false; treated as true, as PEFT does");
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
            problem(SHAPE_MISMATCH, "factors not matrices", module, "LoRA factors of " + where + " are not matrices; shape mismatch");
            return false;
        }
        long rA = a.dim(0);
        long rB = b.dim(1);
        if (rA != rB) {
            problem(SHAPE_MISMATCH, "rank A != rank B", module, "lora_A has " + rA + " rows but lora_B has " + rB + " columns for " + where + "; shape mismatch");
            return false;
        }
        if (rA != rank) {
            problem(CONFIG_MISMATCH, "rank not the config's", module, "adapter_config.json gives " + module + " rank " + rank + " (r / rank_pattern) but its factors have rank " + rA
                    + "; the scale would be wrong, so the config does not belong to these weights");
            return false;
        }
        boolean ok;
        switch (layout) {
            case LINEAR: {
                // the product of the dimensions after the first, not numElements / rows: a weight may have no rows
                long wRest = TensorInfo.numElements(Arrays.copyOfRange(w, 1, w.length));
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
            problem(SHAPE_MISMATCH, "shape mismatch", module, "shape mismatch for " + where + "; is this adapter for another model? Pass the base it was trained on (adapter_config.json base_model_name_or_path)");
        }
        return ok;
    }

    private boolean sameDelta(Ops embed, Ops head, long[] shape) throws IOException {
        if (embed.dora != null || head.dora != null || embed.tokens != null || head.tokens != null || embed.combined != null
                || head.combined != null || embed.terms.size() != head.terms.size()) {
            return false;
        }
        if (embed.replacement != null || head.replacement != null) {
            // modules_to_save on both with ensure_weight_tying: PEFT saves the one trained copy twice
            if (embed.replacement == null || head.replacement == null || !embed.terms.isEmpty() || !sameBytes(embed.replacement, head.replacement)) {
                return false;
            }
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

    /** Whether every adapter asks PEFT to keep tied weights tied (ensure_weight_tying). */
    private boolean ensureWeightTying() {
        return adapters.stream().allMatch(a -> a.config().ensureWeightTying());
    }

    /**
     * The untrained embedding of shape {@code shape} that the one adapter saved beside its trained copy
     * (M.original_module.weight: PEFT saves both when the vocabulary was resized), or null, with a problem
     * recorded, where there is none.
     */
    private TensorSource resizedOriginal(long[] shape) {
        if (adapters.size() == 1) {
            for (AdapterKey k : storedKeys()) {
                if (k.kind() == AdapterKey.Kind.ORIGINAL_MODULE && k.module().equals(embedName)) {
                    TensorInfo t = adapter.tensor(k.key());
                    if (Arrays.equals(t.shape(), shape)) {
                        keyUse.put(keyName(k.key()), lmHead);
                        return new TensorSource(adapter.file(), t);
                    }
                }
            }
        }
        problem(UNSUPPORTED, "the adapter replaces " + embedName + " of a tied model (modules_to_save) with a " + TensorInfo.shapeString(shape)
                + " tensor, a resized vocabulary, but holds no untrained copy of that shape (original_module) for lm_head, which PEFT's merge "
                + "unties and leaves untrained; save the adapter again with PEFT's save_embedding_layers=True");
        return null;
    }

    /** Whether two tensors of adapter files hold the same dtype, shape and bytes (read through mappings, a window at a time). */
    private static boolean sameBytes(TensorSource a, TensorSource b) throws IOException {
        if (a.dtype() != b.dtype() || !Arrays.equals(a.info().shape(), b.info().shape())) {
            return false;
        }
        long size = a.info().sizeInBytes();
        for (long at = 0; at < size; at += SAME_BYTES_WINDOW) {
            long n = Math.min(SAME_BYTES_WINDOW, size - at);
            try (TensorSource.Bytes x = a.read(at, n); TensorSource.Bytes y = b.read(at, n)) {
                if (!x.bytes().equals(y.bytes())) {
                    return false;
                }
            }
        }
        return true;
    }

    private static final long SAME_BYTES_WINDOW = 64L << 20;

    /**
     * The output of a quantized weight that is dequantized ({@code --to bf16/f16/f32}) or merged
     * and requantized (its own format, or NF4 or FP8 from GPTQ/AWQ). Its base value is the dequantized
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
        QuantizedOutput out = !crossFormat ? q.requantizedOutput()
                : to == QuantTarget.FP8 ? Fp8Output.forDense(q.dtype(), q.shape())
                : Nf4Output.forDense(q.dtype(), q.shape(), CROSS_NF4_BLOCKSIZE, false);
        for (String w : out.warnings()) {
            moduleWarnings.add(w, q.weightName(), q.weightName() + " " + w);
        }
        return OutputTensor.requantize(q.weightName(), src, update, out);
    }

    private OutputTensor output(String name, TensorSource baseSource, Ops o) {
        OutputTensor out = denseOutput(name, baseSource, o);
        boolean expertStack = o != null && o.expertRows || experts.isFusedExpertTensor(name);
        return expertStack && !out.isByteCopy() ? out.asExpertRows() : out;
    }

    private OutputTensor denseOutput(String name, TensorSource baseSource, Ops o) {
        TensorInfo info = baseSource.info();
        DType outType = info.dtype();
        if (dtype != null && info.dtype().isMergeable()) {
            outType = dtype;
        }
        if (o == null || o.isEmpty()) {
            return outType == info.dtype() ? OutputTensor.copy(name, baseSource) : OutputTensor.convert(name, outType, baseSource);
        }
        if (!info.dtype().isMergeable() && (!o.terms.isEmpty() || o.dora != null || o.tokens != null || o.combined != null)) {
            throw new IllegalStateException(name + " is " + info.dtype() + " and cannot take LoRA terms");
        }
        return o.replacement != null ? OutputTensor.replace(name, outType, o.replacement, o.update())
                : OutputTensor.merge(name, outType, baseSource, o.update());
    }

    /** The input embedding's weight name in a model folder, or null: the first of {@link #EMBEDDING_SUFFIXES} it has. */
    static String findEmbedding(Checkpoint base) {
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

    /**
     * {@code modules_to_not_convert} of an FP8 output of a GPTQ or AWQ base: null, transformers'
     * default, when the only dense 2-D weights are lm_head and the input embedding (its loader then
     * keeps the output embedding dense, quantizers/base.py get_keys_to_not_convert); else the module
     * of every dense 2-D weight and lm_head (unless lm_head is quantized too), which a list replaces
     * the default of, so that its loader makes an FP8 layer of exactly the FP8 weights. Its patterns match as a prefix or a suffix
     * (quantizers_utils.py should_convert_module): a module whose name also begins or ends a quantized
     * module's name is anchored with {@code $}.
     */
    private List<String> denseModules() {
        List<String> quantized = new ArrayList<>();
        for (QuantizedWeight q : quant.weights().values()) {
            quantized.add(stripWeight(q.weightName()));
        }
        List<String> dense = new ArrayList<>();
        for (TensorInfo t : base.tensors().values()) {
            if (quant.groupTensorNames().contains(t.name()) || t.rank() != 2 || !t.name().endsWith(".weight") || !t.dtype().isMergeable()
                    || t.name().equals(embedName) || t.name().equals(lmHead)) {
                continue;
            }
            dense.add(stripWeight(t.name()));
        }
        boolean quantizedHead = quantized.contains(stripWeight(lmHead)); // GPTQ's lm_head: true
        if (dense.isEmpty() && !quantizedHead) {
            return null;
        }
        if (!quantizedHead) {
            dense.add(stripWeight(lmHead));
        }
        // transformers matches these against the modules' loaded names (quantizers_utils.should_convert_module), which a
        // vision-language checkpoint's differ from (docs/FORMATS.md §1.4)
        List<String> loadedQuantized = new ArrayList<>();
        quantized.forEach(q -> loadedQuantized.add(names.loaded(q)));
        List<String> patterns = new ArrayList<>();
        for (String stored : dense) {
            String m = names.loaded(stored);
            boolean catches = loadedQuantized.stream().anyMatch(q -> q.startsWith(m) || q.endsWith(m));
            patterns.add(catches ? m + "$" : m);
        }
        return patterns;
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
        } else if (crossFormat && to == QuantTarget.FP8) {
            // the weights are fine-grained FP8 now: transformers must load them with its FP8 config
            c.set(quant.configKey(), Fp8Config.toJson(denseModules()));
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

    /** Output tensors in order into shards of at most {@code maxShardSize} bytes, named as transformers names them. */
    static List<MergePlan.Shard> assignShards(List<OutputTensor> outputs, long maxShardSize) {
        List<List<OutputTensor>> groups = new ArrayList<>();
        List<OutputTensor> current = new ArrayList<>();
        long size = 0;
        for (OutputTensor t : outputs) {
            if (!current.isEmpty() && size + t.sizeInBytes() > maxShardSize) {
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
