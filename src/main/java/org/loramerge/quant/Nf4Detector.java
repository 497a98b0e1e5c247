package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.loramerge.format.Checkpoint;

import static org.loramerge.quant.QuantException.Reason.MISSING_TENSOR;
import static org.loramerge.quant.QuantException.Reason.UNSUPPORTED_CONFIG;

/**
 * Finds the bitsandbytes 4-bit weights of a checkpoint: every {@code P.weight} with a
 * {@code P.weight.quant_state.bitsandbytes__nf4} tensor (the key transformers' 4-bit loader
 * collects, transformers quantizers/quantizer_bnb_4bit.py get_weight_conversions), validated as a
 * group, plus config.json's {@code quantization_config}. FP4 weights, 8-bit weights and stray group
 * members are refused with the reason.
 */
public final class Nf4Detector {
    private static final String[] GROUP_SUFFIXES = {Nf4Tensor.ABSMAX, Nf4Tensor.QUANT_MAP, Nf4Tensor.NESTED_ABSMAX,
            Nf4Tensor.NESTED_QUANT_MAP};

    /**
     * @param config  the 4-bit quantization_config, or null when config.json has none
     * @param weights the quantized weights by {@code P.weight}, in checkpoint order
     * @param groupTensorNames every tensor name that belongs to one of the groups
     */
    public record Result(Bnb4BitConfig config, Map<String, Nf4Tensor> weights, Set<String> groupTensorNames, List<String> warnings) {
        public boolean isQuantized() {
            return !weights.isEmpty();
        }

        /** The quantized weight named {@code weightName}, or null. */
        public Nf4Tensor weight(String weightName) {
            return weights.get(weightName);
        }
    }

    /** A checkpoint without 4-bit weights or a bitsandbytes quantization_config. */
    public static final Result NONE = new Result(null, Map.of(), Set.of(), List.of());

    private Nf4Detector() {
    }

    /**
     * {@link #detect} for a checkpoint that may have nothing to do with bitsandbytes: one with no
     * bitsandbytes tensor ({@code .quant_state.bitsandbytes__*}, {@code .SCB}, {@code .weight_format})
     * and no bitsandbytes quantization_config (e.g. a plain 16-bit model, or one whose config names
     * another method) gives {@link #NONE} and is left to the merge's own dtype checks.
     */
    public static Result detectIfBitsandbytes(Checkpoint c) throws QuantException, IOException {
        boolean bnbTensors = c.tensors().keySet().stream().anyMatch(n -> n.contains(".quant_state.bitsandbytes__")
                || n.endsWith(".SCB") || n.endsWith(".weight_format"));
        JsonNode q = c.config() == null ? null : c.config().get(Bnb4BitConfig.KEY);
        boolean bnbConfig = q != null && q.isObject() && "bitsandbytes".equals(q.path("quant_method").asText(null));
        return bnbTensors || bnbConfig ? detect(c) : NONE;
    }

    public static Result detect(Checkpoint c) throws QuantException, IOException {
        Path configPath = c.dir().resolve("config.json");
        Bnb4BitConfig config = Bnb4BitConfig.parse(c.config(), configPath);
        Map<String, Nf4Tensor> weights = new LinkedHashMap<>();
        Set<String> members = new LinkedHashSet<>();
        List<String> warnings = new ArrayList<>();
        for (String name : c.tensors().keySet()) {

            if (name.endsWith(".SCB") || name.endsWith(".weight_format")) {
                throw new QuantException(UNSUPPORTED_CONFIG, c.fileOf(name).path(), name,
                        "belongs to an 8-bit (LLM.int8) weight; loramerge handles 4-bit NF4 only: merge into the original 16-bit base");
            }
            String suffix = name.endsWith(QuantState.TENSOR_SUFFIX) ? QuantState.TENSOR_SUFFIX
                    : name.endsWith(QuantState.FP4_TENSOR_SUFFIX) ? QuantState.FP4_TENSOR_SUFFIX : null;
            if (suffix != null) {
                String weightName = name.substring(0, name.length() - suffix.length());
                Nf4Tensor t = Nf4Tensor.open(c, weightName, suffix);
                weights.put(weightName, t);
                members.addAll(t.tensorNames());
                for (String w : t.warnings()) {
                    warnings.add(w);
                }
            }
        }
        for (String name : c.tensors().keySet()) {
            for (String suffix : GROUP_SUFFIXES) {
                if (name.endsWith(".weight" + suffix) && !members.contains(name)) {
                    String weightName = name.substring(0, name.length() - suffix.length());
                    throw new QuantException(MISSING_TENSOR, c.fileOf(name).path(), weightName + QuantState.TENSOR_SUFFIX,
                            "is missing but '" + name + "' is present; without the quant state the 4-bit weight cannot be read "
                                    + "(the checkpoint is incomplete)");
                }
            }
        }
        if (config != null && weights.isEmpty()) {
            warnings.add("config.json has a bitsandbytes 4-bit quantization_config but no tensor is quantized; it describes nothing here");
        }
        if (config == null && !weights.isEmpty()) {
            warnings.add(weights.size() + " weights are NF4-quantized but config.json has no quantization_config; "
                    + "transformers will not load them as 4-bit without it");
        }
        if (config != null) {
            long mismatched = weights.values().stream().filter(t -> t.isDoubleQuant() != config.doubleQuant()).count();
            if (mismatched > 0) {
                warnings.add(mismatched + " weights are " + (config.doubleQuant() ? "not " : "") + "double-quantized although config.json's "
                        + "bnb_4bit_use_double_quant is " + config.doubleQuant() + "; each weight is read by its own quant state");
            }
            long otherType = weights.values().stream().filter(t -> t.state().code() != config.code()).count();
            if (otherType > 0) {
                warnings.add(otherType + " weights are not " + config.code() + " although config.json's bnb_4bit_quant_type is \""
                        + config.code().typeName() + "\"; each weight is read by its own quant state, but transformers loads them all as "
                        + config.code() + ": fix config.json");
            }
        }
        return new Result(config, Collections.unmodifiableMap(weights), Collections.unmodifiableSet(members),
                Collections.unmodifiableList(warnings));
    }
}
