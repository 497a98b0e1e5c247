package org.loramerge.engine.cuda;

import java.util.EnumMap;
import java.util.Map;
import jcuda.Pointer;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;

/**
 * The task-arithmetic family's kernels of kernels/combine.cu: {@code combine_histogram} (one
 * pass of the top-D selection over a row block), {@code combine_round_bf16/f16/f32} (Δ, W + Δ
 * and its rounding) and {@code combine_delta} (Δ alone, into a float64 matrix). One thread per element, a 2-D grid of (columns / 256, rows); see that file
 * for their parameters.
 */
final class CombineKernels {
    private static final int THREADS = 256;
    private final CUfunction histogram;
    private final CUfunction delta;
    private final Map<DType, CUfunction> combineRound = new EnumMap<>(DType.class);

    CombineKernels(KernelModule module) {
        histogram = module.function("combine_histogram");
        delta = module.function("combine_delta");
        combineRound.put(DType.BF16, module.function("combine_round_bf16"));
        combineRound.put(DType.F16, module.function("combine_round_f16"));
        combineRound.put(DType.F32, module.function("combine_round_f32"));
    }

    /** Launches combine_histogram over a block of rows x cols, on {@code stream}. */
    void histogram(CudaStream stream, int rows, int cols, Pointer... params) {
        launch(histogram, stream, rows, cols, params);
    }

    /** Launches combine_delta over a block of rows x cols, on {@code stream}. */
    void delta(CudaStream stream, int rows, int cols, Pointer... params) {
        launch(delta, stream, rows, cols, params);
    }

    /** Launches combine_round for {@code fmt} over a block of rows x cols, on {@code stream}. */
    void combineRound(CudaStream stream, FloatFormat fmt, int rows, int cols, Pointer... params) {
        launch(combineRound.get(fmt.dtype()), stream, rows, cols, params);
    }

    private static void launch(CUfunction f, CudaStream stream, int rows, int cols, Pointer... params) {
        int gx = (cols + THREADS - 1) / THREADS;
        int gy = Math.min(rows, 65535);
        JCudaDriver.cuLaunchKernel(f, gx, gy, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }
}
