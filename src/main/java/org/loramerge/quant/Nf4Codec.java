package org.loramerge.quant;

import java.util.Arrays;

/**
 * The NF4 code book and the per-block arithmetic of bitsandbytes' 4-bit quantization, bit-exact
 * with scripts/fixtures/nf4_reference.py (whose docstring states every rule with its reason).
 *
 * <p>A weight of {@code n} elements is read flattened row-major in blocks of {@code blocksize}
 * elements (the last block may be partial). Per block: {@code absmax = max|x|}; each element is
 * scaled to {@code x̂ = fl32(x · fl32(1/absmax))}, exactly as the CUDA kernel multiplies by the
 * block's fp32 reciprocal (bitsandbytes csrc/kernels.cu kQuantizeBlockwise), and coded as the
 * number of NF4 thresholds strictly below x̂ (dQuantizeNF4's comparison tree). Dequantization is
 * {@code fl32(NF4[code] · absmax)}, rounded once more to the stored dtype by the caller.
 *
 * <p>Codes are stored two per byte, element 2k in the high nibble (FORMATS.md §5); an odd count is
 * padded with {@link #ZERO_CODE}.
 */
public final class Nf4Codec {
    /** The code of NF4's 0.0; also every code of an all-zero block and the padding nibble. */
    public static final int ZERO_CODE = 7;
    public static final int MIN_BLOCKSIZE = 32;
    public static final int MAX_BLOCKSIZE = 4096;
    /** transformers' and bitsandbytes' default blocksize for 4-bit weights. */
    public static final int DEFAULT_BLOCKSIZE = 64;

    /** FORMATS.md §5: the NF4 values, codes 0..15 (bitsandbytes functional.py get_4bit_type("nf4")), each exactly an fp32 value. */
    private static final float[] VALUES = {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    };

    /**
     * The decision thresholds: the exact midpoint of two adjacent NF4 values (exact in double, as
     * both are fp32) rounded to fp32, which is how the kernel's float literals came about
     * (bitsandbytes tests/test_functional.py test_normal_map_tree prints the double midpoints).
     */
    private static final float[] THRESHOLDS = new float[15];

    static {
        for (int k = 0; k < 15; k++) {
            THRESHOLDS[k] = (float) (((double) VALUES[k] + (double) VALUES[k + 1]) / 2.0);
        }
    }

    private Nf4Codec() {
    }

    /** The value of a 4-bit code. */
    public static float value(int code) {
        return VALUES[code];
    }

    /** The 16 NF4 values: the {@code P.weight.quant_map} tensor. */
    public static float[] quantMap() {
        return VALUES.clone();
    }

    /** The 15 fp32 thresholds, ascending. */
    public static float[] thresholds() {
        return THRESHOLDS.clone();
    }

    /**
     * The code of a scaled value: how many thresholds lie strictly below {@code scaled}. A value
     * exactly equal to a threshold takes the lower code, as the kernel's strict {@code >} does.
     */
    public static int encode(float scaled) {
        int c = 0;
        if (scaled > THRESHOLDS[7]) {
            c = 8;
        }
        if (scaled > THRESHOLDS[c + 3]) {
            c += 4;
        }
        if (scaled > THRESHOLDS[c + 1]) {
            c += 2;
        }
        if (scaled > THRESHOLDS[c]) {
            c += 1;
        }
        return c;
    }

    /** {@code fl32(NF4[code] · absmax)}: the fp32 value bitsandbytes' dequantize kernel computes. */
    public static float dequantize(int code, float absmax) {
        return VALUES[code] * absmax;
    }

    /** True for the blocksizes bitsandbytes' 4-bit kernels take: powers of two from 32 to 4096. */
    public static boolean isValidBlocksize(long blocksize) {
        return blocksize >= MIN_BLOCKSIZE && blocksize <= MAX_BLOCKSIZE && Long.bitCount(blocksize) == 1;
    }

    public static long numBlocks(long numElements, int blocksize) {
        return (numElements + blocksize - 1) / blocksize;
    }

    /** Bytes of the packed {@code P.weight} tensor: two codes per byte. */
    public static long packedBytes(long numElements) {
        return (numElements + 1) / 2;
    }

    /** max |x| over {@code values[off, off+len)}. */
    public static float absmax(float[] values, int off, int len) {
        float m = 0f;
        for (int i = off; i < off + len; i++) {
            m = Math.max(m, Math.abs(values[i]));
        }
        return m;
    }

    /**
     * The factor a block is scaled by: {@code fl32(1/absmax)} when that is a normal fp32, which is
     * every block of a real weight. Returns 0 when it is not (absmax below 2^-128 makes it
     * infinite, above 2^126 subnormal); callers then divide by absmax instead (see {@link #scale}).
     */
    static float reciprocal(float absmax) {
        float r = 1.0f / absmax;
        return r >= Float.MIN_NORMAL && r != Float.POSITIVE_INFINITY ? r : 0f;
    }

    /** {@code x̂} for one element, given the block's absmax and {@link #reciprocal}. */
    static float scale(float x, float absmax, float reciprocal) {
        return reciprocal != 0f ? x * reciprocal : x / absmax;
    }

    /**
     * Quantizes one block of finite values: writes {@code len} codes (0..15, one per byte) to
     * {@code codes[codesOff...]} and returns the block's absmax. An all-zero block (absmax 0) gets
     * {@link #ZERO_CODE} everywhere, so that it decodes to exactly 0.0 under any absmax (the
     * kernel's 0·(1/0) = NaN falls to code 0, i.e. -absmax', which is not 0 once the absmax is
     * double-quantized).
     */
    public static float quantizeBlock(float[] values, int off, int len, byte[] codes, int codesOff) {
        float absmax = absmax(values, off, len);
        if (absmax == 0f) {
            Arrays.fill(codes, codesOff, codesOff + len, (byte) ZERO_CODE);
            return 0f;
        }
        float r = reciprocal(absmax);
        for (int i = 0; i < len; i++) {
            codes[codesOff + i] = (byte) encode(scale(values[off + i], absmax, r));
        }
        return absmax;
    }

    /** The code of element {@code index} in packed bytes whose byte 0 holds elements 0 and 1. */
    public static int codeAt(byte packed, long index) {
        return (index & 1) == 0 ? (packed >> 4) & 0xF : packed & 0xF;
    }

    /**
     * Packs {@code count} codes (one per byte) into {@code (count+1)/2} bytes, element 2k in the
     * high nibble; an odd count is padded with {@link #ZERO_CODE} (the kernel loads 0.0 there).
     * {@code count} elements must start at an even element index.
     */
    public static void pack(byte[] codes, int off, int count, byte[] dst, int dstOff) {
        int pairs = count / 2;
        for (int k = 0; k < pairs; k++) {
            dst[dstOff + k] = (byte) ((codes[off + 2 * k] << 4) | (codes[off + 2 * k + 1] & 0xF));
        }
        if ((count & 1) != 0) {
            dst[dstOff + pairs] = (byte) ((codes[off + count - 1] << 4) | ZERO_CODE);
        }
    }
}
