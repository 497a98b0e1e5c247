package org.loramerge.quant;

import java.util.Arrays;

/**
 * bitsandbytes' signed dynamic 8-bit map ({@code create_dynamic_map(signed=True)}, 7 exponent bits
 * of 8; bitsandbytes functional.py), the code book of double quantization, and the CUDA kernel's
 * search over it (csrc/kernels.cu {@code dQuantize<0>}).
 *
 * <p>Construction, for i = 0..6: the 2^i + 1 fp32 boundaries {@code linspace(0.1, 1, 2^i + 1)};
 * the 2^i means of adjacent boundaries {@code fl32(fl32(b_j + b_j+1) / 2)}; the scale
 * {@code s_i = fl32(10^(i-6))} (the double nearest 10^(i-6), then rounded to fp32); entries
 * {@code ±fl32(s_i · m)}. Then 0.0 and 1.0: 127 + 127 + 2 = 256 values, sorted. The linspace
 * is torch's CPU formula as torch 2.13 evaluates it (each element one FMA rounding:
 * {@code fl32(start + step·j)} for the first half, {@code fl32(end - step·(k-1-j))} for the
 * rest, {@code step = fl32(fl32(1 - fl32(0.1)) / (k-1))}); scripts/fixtures/nf4_reference.py selftest
 * checks the table equals the torch-built one. The map holds 0.0 (index 127) and 1.0 (index
 * 255) but not -1.0: its smallest entry is -0.99296875.
 *
 * <p>Reading a checkpoint always uses its stored {@code nested_quant_map}; this table is what
 * loramerge writes.
 */
public final class DynamicMap {
    /** Index of 0.0 in the signed map: the code of a zero value. */
    public static final int ZERO_CODE = 127;

    private static final float[] SIGNED = build();

    private DynamicMap() {
    }

    /** The 256-entry signed map, ascending. */
    public static float[] signed() {
        return SIGNED.clone();
    }

    private static float[] build() {
        float[] data = new float[256];
        int n = 0;
        for (int i = 0; i < 7; i++) {
            float[] b = linspace(0.1f, 1.0f, (1 << i) + 1);
            float scale = (float) Double.parseDouble("1e" + (i - 6));
            for (int j = 0; j + 1 < b.length; j++) {
                float mean = (b[j] + b[j + 1]) / 2.0f;
                data[n++] = scale * mean;
            }
            for (int j = 0; j + 1 < b.length; j++) {
                float mean = (b[j] + b[j + 1]) / 2.0f;
                data[n++] = -scale * mean;
            }
        }
        data[n++] = 0.0f;
        data[n++] = 1.0f;
        if (n != 256) {
            throw new IllegalStateException("dynamic map has " + n + " entries");
        }
        Arrays.sort(data);
        return data;
    }

    private static float[] linspace(float start, float end, int steps) {
        float step = (end - start) / (steps - 1);
        float[] out = new float[steps];
        int half = steps / 2;
        for (int j = 0; j < steps; j++) {
            out[j] = j < half ? Math.fma(step, (float) j, start) : Math.fma(-step, (float) (steps - 1 - j), end);
        }
        return out;
    }

    /**
     * The 8-bit code of {@code x} (in [-1, 1]) under a sorted 256-entry {@code map}: the CUDA
     * kernel's binary search, step for step. It finds the nearest entry; an x exactly on an fp32
     * midpoint {@code (a+b)·0.5f} goes to the lower entry when x lies above the last probed entry
     * and to the upper one otherwise (the kernel's {@code x > midpoint} / {@code x < midpoint}).
     */
    public static int quantize(float[] map, float x) {
        int pivot = 127;
        int upperPivot = 255;
        int lowerPivot = 0;
        float lower = -1.0f;
        float upper = 1.0f;
        float val = map[pivot];
        for (int i = 64; i > 0; i >>= 1) {
            if (x > val) {
                lowerPivot = pivot;
                lower = val;
                pivot += i;
            } else {
                upperPivot = pivot;
                upper = val;
                pivot -= i;
            }
            val = map[pivot];
        }
        if (upperPivot == 255) {
            upper = map[upperPivot];
        }
        if (lowerPivot == 0) {
            lower = map[lowerPivot];
        }
        if (x > val) {
            float midpoint = (upper + val) * 0.5f;
            return x > midpoint ? upperPivot : pivot;
        }
        float midpoint = (lower + val) * 0.5f;
        return x < midpoint ? lowerPivot : pivot;
    }
}
