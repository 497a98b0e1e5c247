package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasOperation;
import jcuda.runtime.JCuda;

/**
 * One DGEMM of the shape of a merge's first products ({@link DeviceWorker#product}: rank 16, 4096
 * columns, a block's rows), run on a thread of its own as the device opens. The driver loads a
 * cuBLAS kernel on its first launch, which took about 50 ms on the H200 machine (benchmarks/RESULTS.md,
 * 2026-12-01, start-up); this way the load overlaps the pipeline's start (its buffers, its workers)
 * instead of holding up every worker's first block. Best effort: what fails here fails again, and
 * is reported, where a merge calls cuBLAS. Its memory is kept until {@link #close}, as freeing
 * device memory waits for the whole device.
 */
final class CublasWarmup implements AutoCloseable {
    private static final int COLS = 4096;
    private static final int RANK = 16;

    private final Thread thread;
    private CudaStream stream;
    private CublasHandle handle;
    private DeviceMemory u;
    private DeviceMemory vt;
    private DeviceMemory product;

    CublasWarmup(CudaDevice device) {
        int rows = Math.max(1, device.blockBytes() / (2 * COLS)); // a bf16 block's rows
        thread = new Thread(() -> run(device, rows), "loramerge-cublas-warmup");
        thread.setDaemon(true);
        thread.start();
    }

    private void run(CudaDevice device, int rows) {
        try {
            device.bindContext();
            stream = new CudaStream();
            handle = new CublasHandle(stream);
            u = new DeviceMemory((long) rows * RANK * Sizeof.DOUBLE);
            vt = new DeviceMemory((long) RANK * COLS * Sizeof.DOUBLE);
            product = new DeviceMemory((long) rows * COLS * Sizeof.DOUBLE);
            JCuda.cudaMemsetAsync(u.pointer(), 0, u.sizeInBytes(), stream.runtime());
            JCuda.cudaMemsetAsync(vt.pointer(), 0, vt.sizeInBytes(), stream.runtime());
            JCublas2.cublasDgemm(handle.get(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N, COLS, rows, RANK,
                    Pointer.to(new double[] {1.0}), vt.pointer(), COLS, u.pointer(), RANK, Pointer.to(new double[] {0.0}), product.pointer(), COLS);
            stream.synchronize();
        } catch (RuntimeException | LinkageError e) {
            // a merge's first product meets it again and reports it
        }
    }

    /** Waits for the warm-up and frees what it made. */
    @Override
    public void close() {
        boolean interrupted = false;
        while (thread.isAlive()) {
            try {
                thread.join();
            } catch (InterruptedException e) {
                interrupted = true; // still wait: its memory is freed below
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        for (AutoCloseable c : new AutoCloseable[] {product, vt, u, handle, stream}) {
            if (c != null) {
                try {
                    c.close();
                } catch (Exception e) {
                    throw new IllegalStateException("freeing the cuBLAS warm-up failed", e);
                }
            }
        }
    }
}
