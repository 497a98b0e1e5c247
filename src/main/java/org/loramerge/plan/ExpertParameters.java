package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterException;
import org.loramerge.format.TensorInfo;

import static org.loramerge.adapter.AdapterException.Reason.NO_SUCH_BASE_TENSOR;
import static org.loramerge.adapter.AdapterException.Reason.SHAPE_MISMATCH;
import static org.loramerge.adapter.AdapterException.Reason.UNSUPPORTED;

/**
 * Where the parameters PEFT's {@code target_parameters} adapts are stored in a checkpoint
 * (docs/FORMATS.md §9). transformers 5 holds the experts of an MoE block in memory as fused 3-D
 * parameters, {@code experts.gate_up_proj} [E, 2I, H] and {@code experts.down_proj} [E, H, I]
 * (gpt-oss transposed: [E, H, 2I], [E, I, H]), and PEFT's adapter keys name those; but its
 * save_pretrained undoes its weight conversion (transformers conversion_mapping.py), so Mixtral-
 * and Qwen-MoE-style checkpoints hold one 2-D tensor per expert and projection. This class maps an
 * in-memory parameter onto the checkpoint's own tensors, as that conversion does, per model type;
 * {@code src/test/resources/moe/forms.json} records what transformers itself does for each
 * (ExpertFormsTest).
 */
public final class ExpertParameters {
    /** How one family of model types stores its expert parameters. */
    enum Family {
        /** conversion_mapping.py "mixtral": .block_sparse_moe. is .mlp., experts.N.w1/w3 are gate_up_proj[N]'s row halves, w2 is down_proj[N]. */
        MIXTRAL(false, ".block_sparse_moe.", Map.of("gate_up_proj", List.of("w1", "w3"), "down_proj", List.of("w2"))),
        /** conversion_mapping.py "qwen2_moe": experts.N.gate_proj/up_proj are gate_up_proj[N]'s row halves, down_proj is down_proj[N]. */
        QWEN2_MOE(false, null, Map.of("gate_up_proj", List.of("gate_proj", "up_proj"), "down_proj", List.of("down_proj"))),
        /** gpt-oss: no conversion, the fused parameters as they are, laid out [E, in, out] (is_transposed=True). */
        GPT_OSS(true, null, Map.of());

        /** True when the experts are laid out [E, in, out] (transformers' is_transposed), so ΔW[e] = (B_e·A_e)ᵀ. */
        final boolean transposed;
        /** The checkpoint's name for the in-memory ".mlp." segment, or null when they are the same. */
        final String legacyMlp;
        /** Per fused parameter, the per-expert tensors holding its rows, in order. */
        final Map<String, List<String>> perExpert;

        Family(boolean transposed, String legacyMlp, Map<String, List<String>> perExpert) {
            this.transposed = transposed;
            this.legacyMlp = legacyMlp;
            this.perExpert = perExpert;
        }
    }

    /** model_type to family: the types whose in-memory and on-disk forms forms.json records (made with transformers 5.18). */
    static final Map<String, Family> FAMILIES = Map.of(
            "mixtral", Family.MIXTRAL, "minimax", Family.MIXTRAL,
            "qwen2_moe", Family.QWEN2_MOE, "qwen3_moe", Family.QWEN2_MOE, "olmoe", Family.QWEN2_MOE,
            "deepseek_v3", Family.QWEN2_MOE, "glm4_moe", Family.QWEN2_MOE,
            "gpt_oss", Family.GPT_OSS);

    /**
     * The parameters of transformers' MoE experts modules in the order they are registered, which
     * is the order PEFT wraps them in (peft tuners_utils.py _inject_parameters walks
     * named_parameters), so the first one targeted is the innermost ParamWrapper.
     */
    static final List<String> REGISTRATION_ORDER = List.of("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias", "weight", "bias");

    /** config.json fields that hold the number of routed experts, by family (checked against forms.json). */
    private static final List<String> EXPERT_COUNT_KEYS = List.of("num_local_experts", "num_experts", "n_routed_experts");

    /**
     * One checkpoint tensor holding part of a parameter.
     *
     * @param tensor   the checkpoint tensor's name
     * @param expert   the expert whose rows it holds, or -1 when it is the whole parameter
     * @param firstRow the first row of the expert's [d1, d2] matrix it holds
     * @param rows     how many rows it holds
     */
    public record Piece(String tensor, int expert, long firstRow, long rows) {
    }

    /**
     * An in-memory parameter as the checkpoint stores it.
     *
     * @param name       its in-memory name, as PEFT's keys and rank_pattern see it
     * @param experts    E for a 3-D expert parameter [E, d1, d2], 0 for a 2-D parameter [d1, d2]
     * @param d1         rows of one expert's matrix (or of the 2-D parameter)
     * @param d2         columns
     * @param transposed laid out [E, in, out] rather than [E, out, in]
     * @param pieces     the checkpoint tensors that hold it
     */
    public record Stored(String name, int experts, long d1, long d2, boolean transposed, List<Piece> pieces) {
        /** True when the parameter is the checkpoint's one 3-D tensor (gpt-oss), viewed as [E·d1, d2]. */
        public boolean fused() {
            return experts > 0 && pieces.size() == 1 && pieces.get(0).expert() < 0;
        }
    }

    /** Why a parameter cannot be mapped: the reason of the adapter problem it becomes, and the message. */
    static final class Unmapped extends Exception {
        private static final long serialVersionUID = 1L;
        final AdapterException.Reason reason;

        Unmapped(AdapterException.Reason reason, String message) {
            super(message);
            this.reason = reason;
        }
    }

    private final String modelType;
    private final Family family;
    private final Map<String, long[]> shapes;
    private final long configExperts;

    /**
     * @param modelType config.json's model_type
     * @param config    config.json, or null
     * @param shapes    every base tensor's shape by name (a quantized weight's own shape)
     */
    ExpertParameters(String modelType, JsonNode config, Map<String, long[]> shapes) {
        this.modelType = modelType;
        this.family = FAMILIES.get(modelType);
        this.shapes = shapes;
        this.configExperts = expertCount(config);
    }

    private static long expertCount(JsonNode config) {
        if (config == null) {
            return -1;
        }
        for (JsonNode c : new JsonNode[] {config, config.path("text_config")}) {
            for (String k : EXPERT_COUNT_KEYS) {
                if (c.path(k).canConvertToLong() && c.path(k).longValue() > 0) {
                    return c.path(k).longValue();
                }
            }
        }
        return -1;
    }

    /** The model types whose expert parameters loramerge maps, for messages. */
    static String supportedTypes() {
        return String.join(", ", FAMILIES.keySet().stream().sorted().toList());
    }

    /** The parameters of the in-memory module {@code module} that target_parameters selects (their last name segments), in config order. */
    static List<String> selected(AdapterConfig config, String module) {
        List<String> out = new ArrayList<>();
        for (String target : config.targetParameters()) {
            String p = target.substring(target.lastIndexOf('.') + 1);
            if (config.targetsParameter(module + "." + p) && !out.contains(p)) {
                out.add(p);
            }
        }
        return out;
    }

    /**
     * The parameter a ParamWrapper key's module names ({@code M}, {@code M.base_layer}, …), from the
     * config alone (every selected parameter taken to exist), or null when the config selects none
     * of M's parameters or their order is not known. For {@code inspect}, which has no base.
     */
    public static String parameterOf(AdapterConfig config, String keyModule) {
        String module = keyModule;
        int depth = 0;
        while (module.endsWith(".base_layer")) {
            module = module.substring(0, module.length() - ".base_layer".length());
            depth++;
        }
        try {
            List<String> order = wrapped(module, selected(config, module));
            return depth < order.size() ? module + "." + order.get(order.size() - 1 - depth) : null;
        } catch (Unmapped e) {
            return null;
        }
    }

    /**
     * {@code candidates}, the parameters of {@code module} that target_parameters selects and the
     * base has, in PEFT's wrapping order (innermost first). Throws when there are several and their
     * order is not known.
     */
    static List<String> wrapped(String module, List<String> candidates) throws Unmapped {
        List<String> out = new ArrayList<>();
        for (String p : REGISTRATION_ORDER) {
            if (candidates.contains(p)) {
                out.add(p);
            }
        }
        if (out.size() != candidates.size() && candidates.size() > 1) {
            throw new Unmapped(UNSUPPORTED, "target_parameters selects the parameters " + candidates + " of " + module
                    + ", and PEFT nests one ParamWrapper per parameter in the order the module registers them, which loramerge knows only "
                    + "for " + REGISTRATION_ORDER + "; it cannot tell which keys belong to which parameter; use PEFT to merge this adapter");
        }
        return out.isEmpty() ? List.copyOf(candidates) : out;
    }

    /**
     * Where the checkpoint holds the in-memory parameter {@code name}, or null when it holds no
     * tensor for it at all.
     */
    Stored find(String name) throws Unmapped {
        String legacy = legacyName(name);
        for (String candidate : legacy == null ? List.of(name) : List.of(name, legacy)) {
            long[] s = shapes.get(candidate);
            if (s != null && s.length == 2) {
                return new Stored(name, 0, s[0], s[1], false, List.of(new Piece(candidate, -1, 0, s[0])));
            }
            if (s != null && s.length == 3) {
                for (String scale : List.of("_scale_inv", "_scale")) {
                    if (shapes.containsKey(candidate + scale)) {
                        throw new Unmapped(UNSUPPORTED, "the base stores " + name + " as one quantized 3-D tensor (" + candidate + " "
                                + TensorInfo.shapeString(s) + " with " + candidate + scale + ", transformers' FP8Experts layout), which "
                                + "loramerge does not read: it merges experts quantized per expert (each a 2-D FP8, GPTQ, AWQ or "
                                + "bitsandbytes weight) or fused in 16 or 32 bits; dequantize the base first (load it with transformers' "
                                + "dequantize=True and save_pretrained) and pass that as --base");
                    }
                }
                if (family == null) {
                    throw unknownFamily(name, candidate + " " + TensorInfo.shapeString(s));
                }
                return new Stored(name, Math.toIntExact(s[0]), s[1], s[2], family.transposed, List.of(new Piece(candidate, -1, 0, s[1])));
            }
            if (s != null) {
                throw new Unmapped(SHAPE_MISMATCH, "target_parameters adapts " + name + ", stored as " + candidate + " "
                        + TensorInfo.shapeString(s) + ", but PEFT's ParamWrapper takes 2-D and 3-D parameters only");
            }
            if (shapes.containsKey(candidate + "_blocks") && shapes.containsKey(candidate + "_scales")) {
                throw new Unmapped(UNSUPPORTED, "the base stores " + name + " as MXFP4 (" + candidate + "_blocks, " + candidate + "_scales), "
                        + "which loramerge does not read; convert the base first (load it with transformers and "
                        + "Mxfp4Config(dequantize=True), save_pretrained in bf16) and pass that as --base");
            }
        }
        int dot = name.lastIndexOf('.');
        String module = name.substring(0, dot);
        String parameter = name.substring(dot + 1);
        if (!module.endsWith(".experts") && !module.equals("experts")) {
            return null;
        }
        if (family == null) {
            if (shapes.keySet().stream().anyMatch(t -> t.startsWith(module + ".0."))) {
                throw unknownFamily(name, "per-expert tensors (" + module + ".0. ...)");
            }
            return null;
        }
        List<String> parts = family.perExpert.get(parameter);
        if (parts == null) {
            return null;
        }
        String storedModule = module;
        String legacyModule = legacyName(module);
        if (legacyModule != null && !shapes.containsKey(module + ".0." + parts.get(0) + ".weight")) {
            storedModule = legacyModule;
        }
        if (!shapes.containsKey(storedModule + ".0." + parts.get(0) + ".weight")) {
            return null;
        }
        long experts = configExperts;
        if (experts < 0) {
            experts = 0;
            while (shapes.containsKey(storedModule + "." + experts + "." + parts.get(0) + ".weight")) {
                experts++;
            }
        }
        List<Piece> pieces = new ArrayList<>();
        long d1 = -1;
        long d2 = -1;
        for (int e = 0; e < experts; e++) {
            long row = 0;
            for (String part : parts) {
                String tensor = storedModule + "." + e + "." + part + ".weight";
                long[] s = shapes.get(tensor);
                if (s == null) {
                    throw new Unmapped(NO_SUCH_BASE_TENSOR, "target_parameters adapts " + name + ", whose expert " + e + " the base should "
                            + "store as " + tensor + " (config.json gives " + experts + " experts), but it has no such tensor; "
                            + "pass the complete base model the adapter was trained on");
                }
                if (s.length != 2 || d2 >= 0 && s[1] != d2) {
                    throw new Unmapped(SHAPE_MISMATCH, "the base's " + tensor + " is " + TensorInfo.shapeString(s) + ", which does not fit "
                            + "the other tensors of " + name + " (" + d2 + " columns)");
                }
                d2 = s[1];
                pieces.add(new Piece(tensor, e, row, s[0]));
                row += s[0];
            }
            if (d1 >= 0 && row != d1) {
                throw new Unmapped(SHAPE_MISMATCH, "the base's experts of " + name + " differ in size: expert " + e + " has " + row
                        + " rows, expert 0 " + d1);
            }
            d1 = row;
        }
        return new Stored(name, Math.toIntExact(experts), d1, d2, family.transposed, pieces);
    }

    /** True when {@code tensorName} is a fused expert parameter [E, d1, d2] of a known family, whose rows are best cut per expert. */
    boolean isFusedExpertTensor(String tensorName) {
        long[] s = shapes.get(tensorName);
        if (family == null || s == null || s.length != 3) {
            return false;
        }
        int dot = tensorName.lastIndexOf('.');
        return dot > 0 && tensorName.substring(0, dot).endsWith("experts") && REGISTRATION_ORDER.contains(tensorName.substring(dot + 1));
    }

    /** The checkpoint's older name for an in-memory name (Mixtral's .block_sparse_moe.), or null. */
    private String legacyName(String name) {
        if (family == null || family.legacyMlp == null || !name.contains(".mlp.")) {
            return null;
        }
        return name.replace(".mlp.", family.legacyMlp);
    }

    private Unmapped unknownFamily(String name, String what) {
        return new Unmapped(UNSUPPORTED, "target_parameters adapts the expert parameter " + name + " of a model_type \"" + modelType
                + "\" base, stored as " + what + "; how this model type stores its experts (layout, gate/up order, per-expert names) "
                + "is not known to loramerge, which maps those of " + supportedTypes() + "; use PEFT to merge this adapter");
    }
}
