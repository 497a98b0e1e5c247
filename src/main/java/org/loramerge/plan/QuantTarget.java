package org.loramerge.plan;

import java.util.Locale;
import org.loramerge.format.DType;

/**
 * What the 4-bit weights of a bitsandbytes NF4 (QLoRA) base become in the merged model
 * ({@code merge --to}). There is no default: the two choices give different models (docs/QLORA.md).
 */
public enum QuantTarget {
    /** Dequantize, merge, write dense bf16 weights; config.json loses quantization_config. */
    BF16(DType.BF16),
    /** The same in f16. */
    F16(DType.F16),
    /** The same in f32. */
    F32(DType.F32),
    /** Dequantize, merge, requantize to NF4 with the base's settings; config.json keeps quantization_config. */
    NF4(null);

    private final DType denseType;

    QuantTarget(DType denseType) {
        this.denseType = denseType;
    }

    /** The dtype of the dequantized weights, or null for {@link #NF4}. */
    public DType denseType() {
        return denseType;
    }

    /** bf16, f16, f32 (and their other spellings, as --dtype takes them) or nf4; null for anything else. */
    public static QuantTarget parse(String name) {
        if (name.toLowerCase(Locale.ROOT).equals("nf4")) {
            return NF4;
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
