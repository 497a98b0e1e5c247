package org.loramerge.quant;

/**
 * The NF4 code book and the per-block arithmetic of bitsandbytes' 4-bit quantization as its CUDA
 * kernels compute it (csrc/kernels.cu kQuantizeBlockwise, kQuantizeBlockwiseSmall, dQuantizeNF4,
 * kDequantizeBlockwise), bit-exact with scripts/fixtures/nf4_reference.py (whose docstring states
 * every rule with its reason). QLoRA checkpoints are written by that path; FORMATS.md §5 says
 * where bitsandbytes' CPU path differs.
 *
 * <p>A weight of {@code n} elements is read flattened row-major in blocks of {@code blocksize}
 * elements (the last block may be partial). Per block, in the fast-math fp32 of
 * {@link CudaFastMath}: {@code absmax = max|x|} with subnormal elements counting as 0;
 * {@code r = rcp(absmax)}, the hardware's approximate reciprocal (infinite for a zero absmax, 0
 * above 2^126); each element scaled to {@code x̂ = mul(x, r)}, and coded by dQuantizeNF4's
 * comparison tree: the number of its 15 float literals strictly below x̂, a NaN x̂ (a zero
 * block's 0·∞) taking code 0. Dequantization is {@code mul(NF4[code], absmax)}, rounded once
 * more to the stored dtype by the caller.
 *
 * <p>Codes are stored two per byte, element 2k in the high nibble (FORMATS.md §5); an odd count is
 * padded with the code of a 0.0 element of the last block (the kernel loads 0.0 there), which is
 * {@link #ZERO_CODE} unless that block is all zeros ({@link #paddingCode}).
 */
public final class Nf4Codec {
    /** The code of NF4's 0.0: of every 0.0 element of a block that is not all zeros. */
    public static final int ZERO_CODE = 7;
    /** The code of every element of an all-zero block: the kernel's 0 · (1/0) is NaN, which dQuantizeNF4 sends to code 0. */
    public static final int NAN_CODE = 0;
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
     * The decision thresholds: dQuantizeNF4's float literals, which tests/test_functional.py
     * test_normal_map_tree printed as the double midpoints of adjacent NF4 values, written to 16
     * or 17 digits with an {@code f} suffix. nvcc rounds each decimal directly to fp32, so where the
     * double midpoint is itself the exact midpoint of two fp32 values the literal lands on the side
     * its shortest decimal lies on, not on the even one: the literals of 0|1, 8|9, 12|13 and 14|15
     * are one ulp from the fp32 nearest the midpoint. These are the bits nvcc 13.0 writes into the
     * PTX of dQuantizeNF4 ({@code 0fBF591CD9} ...), checked by Nf4CodecVectorsTest.
     */
    private static final float[] THRESHOLDS = {
        Float.intBitsToFloat(0xBF591CD9), Float.intBitsToFloat(0xBF1C5270), Float.intBitsToFloat(0xBEEB8480),
        Float.intBitsToFloat(0xBEADEA76), Float.intBitsToFloat(0xBE703CEC), Float.intBitsToFloat(0xBE0D38BC),
        Float.intBitsToFloat(0xBD3A7871), Float.intBitsToFloat(0x3D22FAFF), Float.intBitsToFloat(0x3DF64863),
        Float.intBitsToFloat(0x3E5067E0), Float.intBitsToFloat(0x3E9582D4), Float.intBitsToFloat(0x3EC753F9),
        Float.intBitsToFloat(0x3F006D03), Float.intBitsToFloat(0x3F248DAF), Float.intBitsToFloat(0x3F5C89D9),
    };

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
     * exactly equal to a threshold takes the lower code, as the kernel's strict {@code >} does; NaN
     * fails every comparison and takes code 0, as in the kernel.
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

    /** {@code mul.ftz(NF4[code], absmax)}: the fp32 value bitsandbytes' dequantize kernel computes. */
    public static float dequantize(int code, float absmax) {
        return CudaFastMath.mul(VALUES[code], absmax);
    }

    /** {@link #dequantize(int, float)} in code book {@code book} (NF4 or FP4). */
    public static float dequantize(FourBitCode book, int code, float absmax) {
        return CudaFastMath.mul(book.value(code), absmax);
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

    /** The kernel's absmax of {@code values[off, off+len)}: max |x|, subnormal values counting as 0. */
    public static float absmax(float[] values, int off, int len) {
        float m = 0f;
        for (int i = off; i < off + len; i++) {
            m = CudaFastMath.maxAbs(m, values[i]);
        }
        return m;
    }

    /**
     * Quantizes one block of finite values: writes {@code len} codes (0..15, one per byte) to
     * {@code codes[codesOff...]} and returns the block's absmax as the kernel stores it (0 when
     * every element is 0 or subnormal). An all-zero block takes code 0 everywhere (0 · ∞ = NaN), a
     * block whose absmax exceeds 2^126 code 7 (its reciprocal is 0).
     */
    public static float quantizeBlock(float[] values, int off, int len, byte[] codes, int codesOff) {
        return quantizeBlock(FourBitCode.NF4, values, off, len, codes, codesOff);
    }

    /** {@link #quantizeBlock(float[], int, int, byte[], int)} in code book {@code book} (NF4 or FP4). */
    public static float quantizeBlock(FourBitCode book, float[] values, int off, int len, byte[] codes, int codesOff) {
        float absmax = absmax(values, off, len);
        float r = CudaFastMath.rcp(absmax);
        for (int i = 0; i < len; i++) {
            codes[codesOff + i] = (byte) book.encode(CudaFastMath.mul(values[off + i], r));
        }
        return absmax;
    }

    /**
     * The code of the padding nibble of a weight with an odd count, whose last block has
     * {@code absmax}: the kernel quantizes a loaded 0.0 there, which is code 7, or code 0 when the
     * block is all zeros (0 · ∞ = NaN).
     */
    public static int paddingCode(float absmax) {
        return paddingCode(FourBitCode.NF4, absmax);
    }

    /** {@link #paddingCode(float)} in code book {@code book}: for FP4 always 0 (+0.0 and NaN both code 0). */
    public static int paddingCode(FourBitCode book, float absmax) {
        return book.encode(CudaFastMath.mul(0f, CudaFastMath.rcp(absmax)));
    }

    /** The code of element {@code index} in packed bytes whose byte 0 holds elements 0 and 1. */
    public static int codeAt(byte packed, long index) {
        return (index & 1) == 0 ? (packed >> 4) & 0xF : packed & 0xF;
    }

    /**
     * Packs {@code count} codes (one per byte) into {@code (count+1)/2} bytes, element 2k in the
     * high nibble; for an odd count the last low nibble is {@code padCode} ({@link #paddingCode}).
     * {@code count} elements must start at an even element index.
     */
    public static void pack(byte[] codes, int off, int count, byte[] dst, int dstOff, int padCode) {
        int pairs = count / 2;
        for (int k = 0; k < pairs; k++) {
            dst[dstOff + k] = (byte) ((codes[off + 2 * k] << 4) | (codes[off + 2 * k + 1] & 0xF));
        }
        if ((count & 1) != 0) {
            dst[dstOff + pairs] = (byte) ((codes[off + count - 1] << 4) | padCode);
        }
    }

    /** {@link #pack(byte[], int, int, byte[], int, int)} of an even count. */
    public static void pack(byte[] codes, int off, int count, byte[] dst, int dstOff) {
        if ((count & 1) != 0) {
            throw new IllegalArgumentException("an odd count of codes needs its padding code");
        }
        pack(codes, off, count, dst, dstOff, 0);
    }
}
