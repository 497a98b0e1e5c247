package org.loramerge.plan;

import java.util.Locale;
import org.loramerge.format.DType;

/**
 * What the quantized weights of a quantized base become in the merged model ({@code merge --to}).
 * There is no default: a dense and a requantized output are different models (docs/QLORA.md).
 * A quantized target requantizes into the format of its name: the base's own format with the
 * base's settings ({@code nf4}, {@code fp4}, {@code int8}, {@code fp8}), or, from a GPTQ or AWQ base,
 * NF4 ({@code nf4}) or transformers' fine-grained FP8 ({@code fp8}). GPTQ and AWQ are targets only to be
 * refused with the reason.
 */
public enum QuantTarget {
    /** Dequantize, merge, write dense bf16 weights; config.json loses quantization_config. */
    BF16(DType.BF16, null),
    /** The same in f16. */
    F16(DType.F16, null),
    /** The same in f32. */
    F32(DType.F32, null),
    /** bitsandbytes 4-bit NF4. */
    NF4(null, "nf4"),
    /** bitsandbytes 4-bit FP4. */
    FP4(null, "fp4"),
    /** bitsandbytes 8-bit (LLM.int8, per-row SCB). */
    INT8(null, "int8"),
    /** FP8 e4m3 with the base's scale scheme, or in 128x128 blocks from a GPTQ or AWQ base. */
    FP8(null, "fp8"),
    /** GPTQ: refused, its quantization needs calibration data. */
    GPTQ(null, "gptq"),
    /** AWQ: refused, its quantization needs calibration data. */
    AWQ(null, "awq");

    private final DType denseType;
    private final String kind;

    QuantTarget(DType denseType, String kind) {
        this.denseType = denseType;
        this.kind = kind;
    }

    /** The dtype of the dequantized weights, or null for a quantized target. */
    public DType denseType() {
        return denseType;
    }

    /** The quantization this target writes (a {@code QuantizedWeight.kind()}), or null for a dense target. */
    public String kind() {
        return kind;
    }

    public boolean isDense() {
        return denseType != null;
    }

    /** bf16, f16, f32 (and their other spellings, as --dtype takes them), nf4, fp4, int8, fp8, gptq, awq; null for anything else. */
    public static QuantTarget parse(String name) {
        String n = name.toLowerCase(Locale.ROOT);
        for (QuantTarget t : values()) {
            if (t.kind != null && t.kind.equals(n)) {
                return t;
            }
        }
        DType d = DType.parseUserName(name);
        if (d == null) {
            return null;
        }
        switch (d) {
            case BF16: return BF16;
            case F16: return F16;
            default: return F32;
        }
    }

    /** As the command line spells it. */
    public String cliName() {
        return name().toLowerCase(Locale.ROOT);
    }
}
