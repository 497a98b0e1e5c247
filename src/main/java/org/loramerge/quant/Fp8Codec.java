package org.loramerge.quant;

/**
 * The 8-bit float formats of FP8 checkpoints (safetensors {@code F8_E4M3}, {@code F8_E5M2},
 * {@code F8_E8M0}; torch {@code float8_e4m3fn}, {@code float8_e5m2}, {@code float8_e8m0fnu}),
 * decoded exactly, and e4m3 encoded as torch's cast does it (round to nearest even; the callers
 * clamp to ±448 first, as transformers and compressed-tensors do).
 *
 * <p>e4m3fn: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, {@code S.1111.111} is
 * NaN, the largest value 448, subnormals {@code m/8 · 2^-6}. e5m2: IEEE-like (bias 15, infinities).
 * e8m0: an exponent alone, {@code 2^(b - 127)}, 255 is NaN (the "ue8m0" scales of DeepSeek-style
 * checkpoints).
 */
public final class Fp8Codec {
    /** The largest finite e4m3fn value. */
    public static final float E4M3_MAX = 448f;

    private static final float[] E4M3 = new float[256];
    private static final float[] E5M2 = new float[256];

    static {
        for (int b = 0; b < 256; b++) {
            E4M3[b] = e4m3(b);
            E5M2[b] = e5m2(b);
        }
    }

    private Fp8Codec() {
    }

    private static float e4m3(int b) {
        int e = (b >>> 3) & 0xF;
        int m = b & 7;
        float sign = (b & 0x80) != 0 ? -1f : 1f;
        if (e == 15 && m == 7) {
            return Float.NaN;
        }
        return sign * (e == 0 ? Math.scalb((float) m, -9) : Math.scalb((float) (8 + m), e - 10));
    }

    private static float e5m2(int b) {
        int e = (b >>> 2) & 0x1F;
        int m = b & 3;
        float sign = (b & 0x80) != 0 ? -1f : 1f;
        if (e == 31) {
            return m == 0 ? sign * Float.POSITIVE_INFINITY : Float.NaN;
        }
        return sign * (e == 0 ? Math.scalb((float) m, -16) : Math.scalb((float) (4 + m), e - 17));
    }

    /** The value of e4m3fn byte {@code b} (its low 8 bits). */
    public static float decodeE4M3(int b) {
        return E4M3[b & 0xFF];
    }

    /** The value of e5m2 byte {@code b}. */
    public static float decodeE5M2(int b) {
        return E5M2[b & 0xFF];
    }

    /** The value of e8m0 byte {@code b}: {@code 2^(b - 127)}, NaN for 255. */
    public static float decodeE8M0(int b) {
        int e = b & 0xFF;
        return e == 255 ? Float.NaN : (float) Math.scalb(1.0, e - 127);
    }

    /**
     * The e4m3fn byte nearest to {@code x} (ties to even), for |x| &lt;= 448 or NaN: torch's
     * {@code .to(torch.float8_e4m3fn)} of a value already clamped to the format's range. A NaN
     * gives {@code 0x7F} (the sign kept).
     */
    public static int encodeE4M3(float x) {
        if (Float.isNaN(x)) {
            return 0x7F;
        }
        int sign = Math.copySign(1f, x) < 0 ? 0x80 : 0;
        float a = Math.abs(x);
        if (a > E4M3_MAX) {
            throw new IllegalArgumentException(x + " is outside e4m3fn's range; clamp it first");
        }
        // the nearest of the 127 non-negative finite codes, ties to the even code (their order is the values' order)
        int lo = 0;
        int hi = 0x7E;
        while (lo < hi) {
            int mid = (lo + hi + 1) >>> 1;
            if (E4M3[mid] <= a) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        int code = lo;
        if (code < 0x7E && E4M3[code] != a) {
            double below = (double) a - E4M3[code];
            double above = (double) E4M3[code + 1] - a;
            if (above < below || (above == below && (code & 1) == 1)) {
                code++;
            }
        }
        return sign | code;
    }
}
