package org.loramerge.quant;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.zip.InflaterInputStream;

/**
 * fp32 arithmetic as bitsandbytes' CUDA kernels do it. The library is built with
 * {@code nvcc --use_fast_math} (its CMakeLists.txt), which makes every fp32 operation flush
 * subnormal inputs and results to zero of the same sign ({@code .ftz}) and compiles
 * {@code 1.0f / x} to the hardware's approximate reciprocal, PTX {@code rcp.approx.ftz.f32}. The
 * quantization kernels (csrc/kernels.cu kQuantizeBlockwise, kQuantizeBlockwiseSmall) take a
 * block's absmax through {@code fabsf}/{@code fmaxf}, store {@code 1.0f / absmax} once and multiply
 * every element by it; the dequantization kernel multiplies code values by the absmax. These are
 * those three operations, bit for bit.
 *
 * <p><b>The reciprocal.</b> rcp.approx is faithful but not correctly rounded: on an NVIDIA H200
 * (sm_90, driver 580) it differs from {@code RN(1/x)} for 1,108,522 of the 2^23 significands of
 * [1, 2) (13%), by one ulp, always the other neighbour of the exact reciprocal, and the same
 * significands differ in every binade whose reciprocal is normal.
 * {@code scripts/device/rcp_approx_table.cu} measured that and wrote the table this class reads
 * (resource {@code rcp_approx_ftz.bits.z}: bit m set where the approximation is not RN). Outside
 * the normal range: a zero or subnormal x (flushed) gives infinity; x above 2^126, whose reciprocal
 * is subnormal, gives zero (x = 2^126 itself gives 2^-126). A GPU whose approximation differs from
 * the table's would quantize a few elements per million differently; the GPU tests compare the
 * device with this table (docs/FORMATS.md §5).
 */
public final class CudaFastMath {
    private static final int SIGNIFICANDS = 1 << 23;
    private static final long[] APPROX_IS_NOT_RN = load();

    private CudaFastMath() {
    }

    private static long[] load() {
        String name = "rcp_approx_ftz.bits.z";
        try (InputStream in = CudaFastMath.class.getResourceAsStream(name)) {
            if (in == null) {
                throw new IllegalStateException("resource " + name + " is missing from the jar; rebuild it");
            }
            ByteArrayOutputStream raw = new ByteArrayOutputStream(SIGNIFICANDS / 8);
            try (InflaterInputStream z = new InflaterInputStream(in)) {
                z.transferTo(raw);
            }
            byte[] b = raw.toByteArray();
            if (b.length != SIGNIFICANDS / 8) {
                throw new IllegalStateException("resource " + name + " holds " + b.length + " bytes, not " + SIGNIFICANDS / 8);
            }
            long[] words = new long[SIGNIFICANDS / 64];
            for (int i = 0; i < b.length; i++) {
                words[i >>> 3] |= (long) (b[i] & 0xFF) << (8 * (i & 7));
            }
            return words;
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read resource " + name, e);
        }
    }

    /** The table: whether rcp.approx of significand {@code m} (of [1, 2)) is not the correctly rounded reciprocal. */
    static boolean approximationDiffers(int significand) {
        return (APPROX_IS_NOT_RN[significand >>> 6] >>> (significand & 63) & 1) != 0;
    }

    /** The table as the device takes it: 2^18 little-endian 32-bit words, bit m of word m / 32. */
    public static int[] reciprocalTable() {
        int[] out = new int[SIGNIFICANDS / 32];
        for (int i = 0; i < APPROX_IS_NOT_RN.length; i++) {
            out[2 * i] = (int) APPROX_IS_NOT_RN[i];
            out[2 * i + 1] = (int) (APPROX_IS_NOT_RN[i] >>> 32);
        }
        return out;
    }

    /** A subnormal value flushed to zero of its sign; any other value unchanged (NaN included). */
    public static float ftz(float x) {
        return Math.abs(x) < Float.MIN_NORMAL ? Math.copySign(0f, x) : x;
    }

    /** {@code mul.ftz.f32}: the product of the flushed inputs, rounded to nearest even, flushed when subnormal. */
    public static float mul(float a, float b) {
        return ftz(ftz(a) * ftz(b));
    }

    /** {@code fabsf} then {@code fmaxf} with a running maximum, flushing: the block absmax step. */
    public static float maxAbs(float runningMax, float x) {
        return Math.max(runningMax, Math.abs(ftz(x)));
    }

    /** {@code rcp.approx.ftz.f32}: bitsandbytes' {@code 1.0f / x} (see the class comment). */
    public static float rcp(float x) {
        if (Float.isNaN(x)) {
            return x;
        }
        float a = Math.abs(ftz(x));
        float r;
        if (a == 0f) {
            r = Float.POSITIVE_INFINITY;
        } else if (a > 0x1p126f) {
            r = 0f; // the reciprocal is subnormal or 0, and flushed
        } else {
            r = 1f / a; // correctly rounded, normal
            if (approximationDiffers(Float.floatToRawIntBits(a) & 0x7FFFFF)) {
                // the other neighbour of the exact 1/a: above r when a·r < 1 (one rounding of 1 - a·r keeps its sign)
                r = Math.fma(-a, r, 1f) > 0f ? Math.nextUp(r) : Math.nextDown(r);
            }
        }
        return Math.copySign(r, x);
    }
}
