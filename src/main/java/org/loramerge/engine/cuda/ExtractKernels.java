package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;

/**
 * The kernels of kernels/extract.cu: {@code extract_delta} (ΔW = tuned − base of a row block in
 * fp64, from the stored formats, with the first non-finite element) and {@code extract_row_squares}
 * (Σ_j a[i, j]² per row in a fixed order). See that file for their parameters.
 */
final class ExtractKernels {
    private static final int THREADS = 256;
    private static final int MAX_GRID = 65535;
    private final CUfunction delta;
    private final CUfunction rowSquares;

    ExtractKernels(KernelModule module) {
        delta = module.function("extract_delta");
        rowSquares = module.function("extract_row_squares");
    }

    /** Launches extract_delta over a block of rows x cols, on {@code stream}. */
    void delta(CudaStream stream, int rows, int cols, Pointer... params) {
        int gx = (cols + THREADS - 1) / THREADS;
        JCudaDriver.cuLaunchKernel(delta, gx, Math.min(rows, MAX_GRID), 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }

    /** Launches extract_row_squares over {@code rows} rows, one block of 256 threads per row, on {@code stream}. */
    void rowSquares(CudaStream stream, int rows, Pointer... params) {
        JCudaDriver.cuLaunchKernel(rowSquares, Math.min(rows, MAX_GRID), 1, 1, THREADS, 1, 1, 0, stream.driver(), Pointer.to(params), null);
    }
}
