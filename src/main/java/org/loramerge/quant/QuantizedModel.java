package org.loramerge.quant;

import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The quantized weights a {@link WeightFormat} found in a checkpoint.
 *
 * @param format           the format, null for {@link #none()} (a checkpoint that does not use any)
 * @param configKey        the config.json key a dequantized output must drop ({@code quantization_config})
 * @param weights          the quantized weights by weight name ({@code P.weight}), in checkpoint order
 * @param groupTensorNames every tensor name that belongs to one of the weights' groups
 * @param warnings         what the user should know about the checkpoint's quantization
 */
public record QuantizedModel(WeightFormat format, String configKey, Map<String, QuantizedWeight> weights,
                             Set<String> groupTensorNames, List<String> warnings) {
    private static final QuantizedModel NONE = new QuantizedModel(null, null, Map.of(), Set.of(), List.of());

    /** A checkpoint without quantized weights. */
    public static QuantizedModel none() {
        return NONE;
    }

    /** True when the checkpoint uses a format: it has quantized weights, or a quantization config for them. */
    public boolean usesFormat() {
        return format != null;
    }

    /** The format's name for messages and {@code inspect}, as {@link WeightFormat#name(QuantizedModel)} gives it; null without one. */
    public String formatName() {
        return format == null ? null : format.name(this);
    }

    public boolean isQuantized() {
        return !weights.isEmpty();
    }

    /** The quantized weight named {@code weightName}, or null. */
    public QuantizedWeight weight(String weightName) {
        return weights.get(weightName);
    }
}
