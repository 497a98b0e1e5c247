package org.loramerge.quant;

import java.math.BigInteger;
import java.nio.file.Path;

/**
 * Double quantization of the per-block absmax values ({@code bnb_4bit_use_double_quant}), as
 * bitsandbytes functional.py quantize_4bit does with {@code compress_statistics}: subtract the
 * mean, then quantize blockwise (256) to 8 bits with the signed dynamic map, on the CUDA path
 * (csrc/kernels.cu kQuantizeBlockwise with General8bit, in the fast-math fp32 of {@link CudaFastMath}).
 *
 * <ul>
 * <li>{@code offset = fl32(fl32(S) · fl32(1/fl32(n)))}, S the exact sum of the n absmax values:
 *     torch's fp32 {@code mean()} on the GPU, which bitsandbytes calls, sums in fp32 and multiplies
 *     the sum by the fp32 factor 1/n (its MeanOps), so its offset is not always the correctly
 *     rounded mean (absmax {0.248046875, 0, 0.015625, 0, 0.21484375, 0.193359375}: bitsandbytes
 *     0.50.1 writes 0.11197917, the correctly rounded mean is 0.111979164). torch's fp32 sum is
 *     fl32(S) whenever its partial sums are exact, as they are for the few bf16- or f16-valued
 *     absmax of small weights; for many blocks of full fp32 significands its summation order,
 *     which depends on the GPU's number of multiprocessors, can move the sum by ulps, and no
 *     implementation can match every device: loramerge rounds the exact sum once, the same on
 *     both engines and every device. A checkpoint's offset is read as stored, whatever rule
 *     wrote it.</li>
 * <li>{@code d_i = fl32(absmax_i - offset)} (a torch subtraction: no flush); per nested block of
 *     256: {@code nested_absmax = max|d_i|} (subnormal d counting as 0), {@code code_i =
 *     }{@link DynamicMap#quantize}{@code (mul(d_i, rcp(nested_absmax)))}. A block whose
 *     nested_absmax is 0 (all its absmax equal the mean) has an infinite reciprocal: 0 · ∞ = NaN
 *     fails every comparison of the kernel's search, which ends on code 0.</li>
 * <li>Decoding: {@code absmax_i = fl32(mul(map[code_i], nested_absmax[i/256]) + offset)}, two
 *     roundings (bitsandbytes dequantizes blockwise in a fast-math kernel, then adds the offset
 *     with torch).</li>
 * </ul>
 */
public final class DoubleQuant {
    /** The nested blocksize bitsandbytes always uses for the absmax values. */
    public static final int NESTED_BLOCKSIZE = 256;

    /** What to do when a merged weight requantized to 4-bit has no finite offset ({@link #requireFiniteOffset}); the GPU engine's too. */
    public static final String MERGE_REMEDY = "use a dense output instead (--to bf16 or f32), or scale the weight down";

    /** The double-quantized absmax of one weight. */
    public record Result(byte[] codes, float[] nestedAbsmax, float offset) {
    }

    private DoubleQuant() {
    }

    /** Quantizes {@code absmax[0, count)} with the signed dynamic map. */
    public static Result quantize(float[] absmax, int count) {
        float[] map = DynamicMap.signed();
        float offset = offset(absmax, count);
        byte[] codes = new byte[count];
        int nestedBlocks = (count + NESTED_BLOCKSIZE - 1) / NESTED_BLOCKSIZE;
        float[] nested = new float[nestedBlocks];
        float[] d = new float[NESTED_BLOCKSIZE];
        for (int j = 0; j < nestedBlocks; j++) {
            int start = j * NESTED_BLOCKSIZE;
            int len = Math.min(NESTED_BLOCKSIZE, count - start);
            float na = 0f;
            for (int t = 0; t < len; t++) {
                d[t] = absmax[start + t] - offset;
                na = CudaFastMath.maxAbs(na, d[t]);
            }
            nested[j] = na;
            float r = CudaFastMath.rcp(na);
            for (int t = 0; t < len; t++) {
                codes[start + t] = (byte) DynamicMap.quantize(map, CudaFastMath.mul(d[t], r));
            }
        }
        return new Result(codes, nested, offset);
    }

    /** One decoded absmax: {@code fl32(mul(map[code], nestedAbsmax) + offset)}. */
    public static float decode(int code, float nestedAbsmax, float offset, float[] map) {
        float scaled = CudaFastMath.mul(map[code & 0xFF], nestedAbsmax);
        return scaled + offset;
    }

    /**
     * The double quantization offset of {@code values[0, count)} (finite): {@code fl32(fl32(S) ·
     * fl32(1/fl32(count)))} with S their exact sum (each fp32 value is an integer multiple of
     * 2^-149), as torch's fp32 mean is where its partial sums are exact.
     */
    public static float offset(float[] values, int count) {
        if (count <= 0) {
            throw new IllegalArgumentException("mean of no values");
        }
        return offsetOfSums(exponentSums(values, count), count);
    }

    /**
     * The exact sum of {@code values[0, count)} as integers: element {@code e} holds the sum of the
     * significands (hidden bit included) of the positive values of biased exponent {@code e},
     * element {@code 256 + e} that of the negative ones (exponent 0: subnormals). What the GPU
     * engine's nf4_exponent_sums kernel computes; a long holds 2^39 significands.
     */
    public static long[] exponentSums(float[] values, int count) {
        long[] sums = new long[512];
        for (int i = 0; i < count; i++) {
            int bits = Float.floatToRawIntBits(values[i]);
            int exp = (bits >>> 23) & 0xFF;
            if (exp == 0xFF) {
                throw new IllegalArgumentException("non-finite value " + values[i]);
            }
            long significand = exp == 0 ? (bits & 0x7FFFFF) : ((bits & 0x7FFFFF) | 0x800000);
            sums[(bits < 0 ? 256 : 0) + exp] += significand;
        }
        return sums;
    }

    /**
     * The double quantization offset ({@link #offset}) of {@code count} values given by their
     * {@link #exponentSums}: the exact sum rounded once to fp32 (ties to even; infinite past the
     * fp32 range, as torch's sum would be), times the fp32 factor {@code 1f / count}, rounded.
     */
    public static float offsetOfSums(long[] sums, long count) {
        if (count <= 0 || sums.length != 512) {
            throw new IllegalArgumentException("mean of " + count + " values from " + sums.length + " sums");
        }
        if (sums[255] != 0 || sums[511] != 0) {
            throw new IllegalArgumentException("non-finite values in the sums");
        }
        // value = significand · 2^(max(exp,1) - 150), i.e. (significand << (max(exp,1) - 1)) · 2^-149
        BigInteger sum = BigInteger.ZERO;
        for (int e = 0; e < 255; e++) {
            BigInteger net = BigInteger.valueOf(sums[e]).subtract(BigInteger.valueOf(sums[256 + e]));
            if (net.signum() != 0) {
                sum = sum.add(net.shiftLeft(Math.max(e, 1) - 1));
            }
        }
        float total = roundToFloat(sum, BigInteger.ONE.shiftLeft(149));
        float factor = 1f / (float) count; // torch: static_cast<float>(1) / numel, the int64 numel converted to float
        return total * factor;
    }

    /**
     * {@code offset} when it is finite; else the typed refusal of weight {@code tensor} of {@code path}:
     * its {@code count} block absmax values sum past fp32's range (values near bf16's or fp32's largest),
     * so bitsandbytes' offset ({@link #offset}: the fp32 sum times 1/n, as torch's mean) is infinite
     * and the double-quantized weight would dequantize to NaN. {@code remedy} says what to do instead.
     *
     * @throws QuantException {@link QuantException.Reason#NON_FINITE}
     */
    public static float requireFiniteOffset(float offset, long count, Path path, String tensor, String remedy) throws QuantException {
        if (!Float.isFinite(offset)) {
            throw new QuantException(QuantException.Reason.NON_FINITE, path, tensor, "its " + count
                    + " block absmax values sum past the fp32 range, so the double quantization offset (bitsandbytes' fp32 mean: the fp32 sum times 1/"
                    + count + ") is " + offset + " and the weight would dequantize to NaN; " + remedy);
        }
        return offset;
    }

    /**
     * {@link #requireFiniteOffset} of a merged weight requantized to 4-bit, with {@link #MERGE_REMEDY}:
     * the one check of both engines (Nf4Requantizer on the CPU, the GPU engine's requantization), so
     * that either refuses such a weight with the same typed error. {@code weightName} and
     * {@code path} name the base weight and its file.
     *
     * @throws QuantException {@link QuantException.Reason#NON_FINITE}
     */
    public static float requireFiniteMergedOffset(float offset, long count, Path path, String weightName) throws QuantException {
        return requireFiniteOffset(offset, count, path, weightName, MERGE_REMEDY);
    }

    /** The fp32 nearest to {@code num / den} (den > 0), ties to even; no double rounding. */
    static float roundToFloat(BigInteger num, BigInteger den) {
        int sign = num.signum();
        if (sign == 0) {
            return 0f;
        }
        BigInteger n = num.abs();
        // s such that n · 2^s / den lies in [2^23, 2^24)
        int s = 24 - (n.bitLength() - den.bitLength());
        BigInteger[] qr;
        while (true) {
            qr = divide(n, den, s);
            int bits = qr[0].bitLength();
            if (bits > 24) {
                s--;
            } else if (bits < 24) {
                s++;
            } else {
                break;
            }
        }
        if (23 - s < -126) {
            s = 149; // subnormal: the quantum is 2^-149
            qr = divide(n, den, s);
        }
        BigInteger d = s >= 0 ? den : den.shiftLeft(-s);
        long m = qr[0].longValueExact();
        int cmp = qr[1].shiftLeft(1).compareTo(d);
        if (cmp > 0 || (cmp == 0 && (m & 1) == 1)) {
            m++;
        }
        double value = Math.scalb((double) m, -s);
        float f = value > Float.MAX_VALUE ? Float.POSITIVE_INFINITY : (float) value; // exact: m ≤ 2^24
        return sign < 0 ? -f : f;
    }

    private static BigInteger[] divide(BigInteger n, BigInteger den, int s) {
        return s >= 0 ? n.shiftLeft(s).divideAndRemainder(den) : n.divideAndRemainder(den.shiftLeft(-s));
    }
}
