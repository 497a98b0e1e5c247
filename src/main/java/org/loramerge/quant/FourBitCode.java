package org.loramerge.quant;

/**
 * The two code books of bitsandbytes' 4-bit weights ({@code quant_type}), as its CUDA kernels use
 * them (csrc/kernels.cu): the value of each code ({@code nf4_dequantization_lut},
 * {@code dDequantizeFP4Tree}), the code of a scaled value ({@code dQuantizeNF4}, {@code dQuantizeFP4}),
 * and the {@code quant_map} tensor bitsandbytes stores beside the codes
 * ({@code functional.get_4bit_type}), which its kernels do not read.
 */
public enum FourBitCode {
    /** NormalFloat 4: 16 quantiles of a normal distribution (see {@link Nf4Codec}). */
    NF4("nf4"),
    /**
     * A 4-bit float: sign (bit 3) and the magnitudes 0, 0.0052083, 0.6667, 1, 0.3333, 0.5, 0.1667,
     * 0.25 of codes 0-7 (the kernel's {@code fp4_dequantization_lut} literals, as fp32); code 8 is -0.0.
     */
    FP4("fp4");

    private static final float[] FP4_MAGNITUDES = {0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f};
    /** get_4bit_type("fp4") before its division by 12: {@code -0} is the integer 0 there, so +0.0. */
    private static final float[] FP4_MAP_NUMERATORS = {0f, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, 0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f};

    private final String typeName;

    FourBitCode(String typeName) {
        this.typeName = typeName;
    }

    /** bitsandbytes' {@code quant_type}: "nf4" or "fp4". */
    public String typeName() {
        return typeName;
    }

    /** The code book of a {@code quant_type}, or null for another name. */
    public static FourBitCode of(String typeName) {
        for (FourBitCode c : values()) {
            if (c.typeName.equals(typeName)) {
                return c;
            }
        }
        return null;
    }

    /** The value the dequantize kernel multiplies the absmax by. */
    public float value(int code) {
        if (this == NF4) {
            return Nf4Codec.value(code);
        }
        float magnitude = FP4_MAGNITUDES[code & 7];
        return (code & 8) != 0 ? -magnitude : magnitude; // 1.0f - 2 * sign, times the magnitude: exact
    }

    /**
     * The code of a scaled value, as the kernel's comparison tree gives it (NaN: code 0). FP4:
     * the sign from {@code x < 0}, the magnitude of {@code |x|} against the kernel's float literals
     * with {@code >}.
     */
    public int encode(float scaled) {
        if (this == NF4) {
            return Nf4Codec.encode(scaled);
        }
        int sign = scaled < 0 ? 0b1000 : 0;
        float x = Math.abs(scaled);
        int m;
        if (x > 0.29166667f) {
            m = x > 0.583333f ? (x > 0.8333333f ? 0b0011 : 0b0010) : (x > 0.4166667f ? 0b0101 : 0b0100);
        } else if (x > 0.0859375f) {
            m = x > 0.20833333f ? 0b0111 : 0b0110;
        } else {
            m = x > 0.00260417f ? 0b0001 : 0b0000;
        }
        return m + sign;
    }

    /** The 16 values bitsandbytes stores as {@code P.weight.quant_map} (get_4bit_type, fp32). */
    public float[] quantMap() {
        if (this == NF4) {
            return Nf4Codec.quantMap();
        }
        float[] out = new float[16];
        for (int i = 0; i < 16; i++) {
            out[i] = FP4_MAP_NUMERATORS[i] / 12f;
        }
        return out;
    }
}
