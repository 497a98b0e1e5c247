package org.loramerge.engine.cuda;

import java.util.EnumMap;
import java.util.Map;
import jcuda.Pointer;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;

/**
 * The fused add-and-round kernels of kernels/round.cu ({@code merge_round_bf16/f16/f32}): one
 * thread per element of a row block, a 2-D grid of (columns / 256, rows). See that file for what
 * they compute and list.
 */
final class MergeKernels {
    private static final int THREADS = 256;
    private final Map<DType, CUfunction> mergeRound = new EnumMap<>(DType.class);

    MergeKernels(PtxModule module) {
        mergeRound.put(DType.BF16, module.function("merge_round_bf16"));
        mergeRound.put(DType.F16, module.function("merge_round_f16"));
        mergeRound.put(DType.F32, module.function("merge_round_f32"));
    }

    /** Launches merge_round for {@code fmt} over a block of rows x cols, on {@code stream}. */
    void mergeRound(CudaStream stream, FloatFormat fmt, int rows, int cols, Pointer... params) {
        int gx = (cols + THREADS - 1) / THREADS;
        int gy = Math.min(rows, 65535);
        JCudaDriver.cuLaunchKernel(mergeRound.get(fmt.dtype()), gx, gy, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }
}
