package org.loramerge.engine.cuda;

import java.util.concurrent.atomic.AtomicBoolean;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasOperation;
import jcuda.runtime.JCuda;
import org.loramerge.engine.Pools;

/**
 * One DGEMM of the shape of a merge's first products ({@link DeviceWorker#product}: rank 16, 4096
 * columns, a block's rows), once a process, ahead of them. The driver loads a cuBLAS kernel on its
 * first launch, which took 50-150 ms on the H200 machine (benchmarks/RESULTS.md, 2026-12-01,
 * start-up) and, run beside them, held back the registering of the pipeline's page-locked blocks.
 * So the driver's prestart runs it as soon as the context is there ({@link #runHere}), while the
 * plan is still being made; a device opened without the prestart (the API) runs it on a thread of
 * its own as it opens ({@link #start}). Best effort: what fails here fails again, and is reported,
 * where a merge calls cuBLAS.
 */
final class CublasWarmup implements AutoCloseable {
    private static final int COLS = 4096;
    private static final int RANK = 16;
    /** Whether a warm-up ran or runs in this process. */
    private static final AtomicBoolean CLAIMED = new AtomicBoolean();

    private final int rows;
    private Thread thread;
    private CudaStream stream;
    private CublasHandle handle;
    private DeviceMemory u;
    private DeviceMemory vt;
    private DeviceMemory product;

    private CublasWarmup(int blockBytes) {
        this.rows = Math.max(1, blockBytes / (2 * COLS)); // a bf16 block's rows
    }

    /**
     * The warm-up on the calling thread, whose context is current and with cuBLAS loaded, its memory
     * freed after it; nothing when one ran or runs already.
     */
    static void runHere(int blockBytes) {
        if (CLAIMED.compareAndSet(false, true)) {
            CublasWarmup w = new CublasWarmup(blockBytes);
            try {
                w.run();
            } finally {
                try {
                    w.free();
                } catch (RuntimeException e) {
                    // best effort, as the warm-up itself
                }
            }
        }
    }

    /**
     * The warm-up on a thread of its own for {@code device}, its memory kept until {@link #close}
     * (freeing device memory waits for the whole device, where the merge may be running by then);
     * null when one ran or runs already.
     */
    static CublasWarmup start(CudaDevice device) {
        if (!CLAIMED.compareAndSet(false, true)) {
            return null;
        }
        CublasWarmup w = new CublasWarmup(device.blockBytes());
        w.thread = new Thread(() -> {
            device.bindContext();
            w.run();
        }, "loramerge-cublas-warmup");
        w.thread.setDaemon(true);
        w.thread.start();
        return w;
    }

    private void run() {
        try {
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

    /** Waits for the warm-up's thread and frees what it made (with the device's context current). */
    @Override
    public void close() {
        if (thread != null) {
            Pools.awaitUninterruptibly(thread::join); // its memory is freed below
        }
        free();
    }

    private void free() {
        for (AutoCloseable c : new AutoCloseable[] {product, vt, u, handle, stream}) {
            if (c != null) {
                try {
                    c.close();
                } catch (Exception e) {
                    throw new IllegalStateException("freeing the cuBLAS warm-up failed", e);
                }
            }
        }
        product = vt = u = null;
        handle = null;
        stream = null;
    }
}
