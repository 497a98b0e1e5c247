package org.loramerge.engine.cuda;

import java.util.EnumMap;
import java.util.Locale;
import java.util.Map;
import jcuda.Pointer;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;

/**
 * The kernels of kernels/round.cu: the fused add-and-round ({@code merge_round_bf16/f16/f32}, one
 * thread per element of a row block, a 2-D grid of (columns / 256, rows)), the exact settling of
 * the elements it lists ({@code settle_*}, one thread per listed element), and DoRA's row-norm
 * merge ({@code dora_round_*}, one thread block per row). See that file for what they compute.
 */
final class MergeKernels {
    private static final int THREADS = 256;
    /** Blocks of the settle grid: the list is at most DeviceWorker.AMBIGUOUS_CAPACITY long, strided over them. */
    private static final int SETTLE_BLOCKS = 256;
    private final Map<DType, CUfunction> mergeRound = new EnumMap<>(DType.class);
    private final Map<DType, CUfunction> settle = new EnumMap<>(DType.class);
    private final Map<DType, CUfunction> doraRound = new EnumMap<>(DType.class);

    MergeKernels(KernelModule module) {
        for (DType d : new DType[] {DType.BF16, DType.F16, DType.F32}) {
            String type = d.name().toLowerCase(Locale.ROOT);
            mergeRound.put(d, module.function("merge_round_" + type));
            settle.put(d, module.function("settle_" + type));
            doraRound.put(d, module.function("dora_round_" + type));
        }
    }

    /** The kernels' code of a format (kernels/rounding.cuh LM_BF16, LM_F16, LM_F32). */
    static int code(FloatFormat fmt) {
        switch (fmt) {
            case BF16: return 0;
            case F16: return 1;
            default: return 2;
        }
    }

    /** Launches settle for {@code fmt} over the list merge_round wrote, on {@code stream}. */
    void settle(CudaStream stream, FloatFormat fmt, Pointer... params) {
        JCudaDriver.cuLaunchKernel(settle.get(fmt.dtype()), SETTLE_BLOCKS, 1, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }

    /** Launches dora_round for {@code fmt} over a block of {@code rows} rows, one thread block per row, on {@code stream}. */
    void doraRound(CudaStream stream, FloatFormat fmt, int rows, Pointer... params) {
        JCudaDriver.cuLaunchKernel(doraRound.get(fmt.dtype()), Math.min(rows, 65535), 1, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params),
                null);
    }

    /** Launches merge_round for {@code fmt} over a block of rows x cols, on {@code stream}. */
    void mergeRound(CudaStream stream, FloatFormat fmt, int rows, int cols, Pointer... params) {
        int gx = (cols + THREADS - 1) / THREADS;
        int gy = Math.min(rows, 65535);
        JCudaDriver.cuLaunchKernel(mergeRound.get(fmt.dtype()), gx, gy, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }
}
