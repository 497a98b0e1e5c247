package org.loramerge.engine.cuda;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaEvent_t;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;

/**
 * The threads that form extract's ΔW on the device ({@link CudaWeightDelta#open}), owned by the
 * backend. A weight's row blocks are dealt to them as each asks for the next, and each thread
 * keeps its own pipeline: it reads a block's rows of both checkpoints (positional reads straight
 * into one of its two page-locked staging slots, so reading is the only host copy) while the
 * previous block's upload and {@code extract_delta} run on its stream; an event recorded after a
 * slot's upload says when the slot may be filled again, so the host waits only when it has got
 * two blocks ahead of the device, never for a block's kernels. Reading the page cache on several
 * threads at once is what lets forming run at the speed of the checkpoints' memory rather than of
 * one core's copy; the uploads of all threads share the PCIe link.
 *
 * <p>Each thread also queues its blocks' {@code extract_row_squares} (per row, so the sums are the
 * same bits however the rows are cut into blocks), and waits for its stream once at the end of its
 * share of a weight: when {@link #form} returns, or throws, nothing of it is still running on the
 * device, so the caller may read the sums or free ΔW.
 *
 * <p>Memory: per thread its {@link DeviceWorker} (a block's device buffers) and two staging slots
 * of a worker's block size in page-locked host memory.
 */
final class DeltaFormer implements AutoCloseable {
    private final CudaDevice device;
    private final int threadCount;
    private final ExecutorService threads;
    private final ThreadLocal<Staging> staging = new ThreadLocal<>();
    private final List<Staging> stagings = new ArrayList<>();
    private boolean closed;

    DeltaFormer(CudaDevice device, int threadCount) {
        this.device = device;
        this.threadCount = threadCount;
        AtomicInteger n = new AtomicInteger();
        this.threads = Executors.newFixedThreadPool(threadCount, r -> {
            Thread th = new Thread(r, "loramerge-extract-form-" + n.incrementAndGet());
            th.setDaemon(true);
            return th;
        });
    }

    /** Threads forming at once. */
    int threads() {
        return threadCount;
    }

    /**
     * One thread's staging: two slots of the worker's block size, each the base rows in its first
     * half and the tuned rows in its second, and after each slot's upload an event.
     */
    private static final class Staging implements AutoCloseable {
        final DeviceWorker worker;
        final long half;
        final PinnedMemory[] slots = new PinnedMemory[2];
        final ByteBuffer[] baseViews = new ByteBuffer[2];
        final ByteBuffer[] tunedViews = new ByteBuffer[2];
        final cudaEvent_t[] uploaded = new cudaEvent_t[2];
        int next;

        Staging(DeviceWorker worker, int blockBytes) {
            this.worker = worker;
            this.half = blockBytes / 2;
            try {
                for (int s = 0; s < 2; s++) {
                    slots[s] = new PinnedMemory(blockBytes);
                    // slices start at their own address: a positional read fills them from index 0
                    baseViews[s] = slots[s].buffer().limit(Math.toIntExact(half)).slice();
                    tunedViews[s] = slots[s].buffer().position(Math.toIntExact(half)).slice();
                    uploaded[s] = new cudaEvent_t();
                    // a thread that gets two blocks ahead of the PCIe link sleeps until its slot is free instead of spinning
                    // on a core that the other threads' reads and the SVDs' host steps need
                    JCuda.cudaEventCreateWithFlags(uploaded[s], JCuda.cudaEventDisableTiming | JCuda.cudaEventBlockingSync);
                }
            } catch (RuntimeException | Error e) {
                close();
                throw e;
            }
        }

        /** After the stream is idle (the events then have nothing pending). */
        @Override
        public void close() {
            for (int s = 0; s < 2; s++) {
                if (uploaded[s] != null) {
                    JCuda.cudaEventDestroy(uploaded[s]);
                    uploaded[s] = null;
                }
                if (slots[s] != null) {
                    slots[s].close();
                    slots[s] = null;
                }
            }
        }
    }

    /** The calling (forming) thread's staging, made on its first block. */
    private Staging staging() {
        Staging s = staging.get();
        if (s == null) {
            s = new Staging(device.worker(), device.blockBytes());
            synchronized (stagings) {
                if (closed) {
                    s.close();
                    throw new IllegalStateException("ΔW formed after the engine was closed");
                }
                stagings.add(s);
            }
            staging.set(s);
        }
        return s;
    }

    /**
     * Forms ΔW = tuned − base [rows, cols] into {@code delta} (row-major fp64), blocks of {@code
     * blockRows} rows, each row's Σ ΔW² into {@code rowSquares} and the first non-finite element's
     * index by atomicMin into {@code firstBad} (which the caller has set, on the device, to all ones
     * before). Returns when every thread has finished its share and its stream is idle; the first
     * failure of a share is thrown only once every share has stopped (the others stop at their next
     * block), so nothing writes into these buffers after this returns.
     */
    void form(TensorSource base, TensorSource tuned, int rows, int cols, int blockRows, DeviceMemory delta, DeviceMemory rowSquares,
              DeviceMemory firstBad) throws IOException {
        int blocks = (rows + blockRows - 1) / blockRows;
        AtomicInteger nextBlock = new AtomicInteger();
        AtomicBoolean stop = new AtomicBoolean();
        Weight job = new Weight(base, tuned, rows, cols, blockRows, blocks, delta, rowSquares, firstBad, nextBlock, stop);
        List<Future<?>> shares = new ArrayList<>();
        Throwable failure = null;
        try {
            for (int i = 0; i < Math.min(threadCount, blocks); i++) {
                shares.add(threads.submit(() -> {
                    share(job);
                    return null;
                }));
            }
        } catch (RuntimeException e) {
            failure = e; // rejected after close: the shares already submitted still run to their end below
            stop.set(true);
        }
        boolean interrupted = false;
        for (Future<?> f : shares) {
            while (true) {
                try {
                    f.get();
                    break;
                } catch (ExecutionException e) {
                    stop.set(true);
                    if (failure == null) {
                        failure = e.getCause();
                    }
                    break;
                } catch (InterruptedException e) {
                    // keep waiting: the caller frees ΔW only once no share writes into it
                    interrupted = true;
                    stop.set(true);
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
        if (failure instanceof IOException io) {
            throw io;
        }
        if (failure instanceof RuntimeException re) {
            throw re;
        }
        if (failure instanceof Error er) {
            throw er;
        }
        if (failure != null) {
            throw new IOException(failure);
        }
        if (interrupted) {
            throw new InterruptedIOException("interrupted while forming ΔW; it is incomplete");
        }
    }

    /** A weight being formed: what every share reads, where it writes, and the next block to take. */
    private record Weight(TensorSource base, TensorSource tuned, int rows, int cols, int blockRows, int blocks, DeviceMemory delta,
                         DeviceMemory rowSquares, DeviceMemory firstBad, AtomicInteger nextBlock, AtomicBoolean stop) {
    }

    /** One thread's share: blocks taken in turn until none is left or another share failed; its stream idle at the end. */
    private void share(Weight job) throws IOException {
        device.bindContext();
        Staging s = staging();
        DeviceWorker w = s.worker;
        FloatFormat bf = FloatFormat.of(job.base().dtype());
        FloatFormat tf = FloatFormat.of(job.tuned().dtype());
        int cols = job.cols();
        Throwable failure = null;
        try {
            int b;
            while (!job.stop().get() && (b = job.nextBlock().getAndIncrement()) < job.blocks()) {
                int r0 = b * job.blockRows();
                int n = Math.min(job.blockRows(), job.rows() - r0);
                int slot = s.next;
                s.next ^= 1;
                // the upload that last read this slot (two blocks ago) is done; an event never recorded returns at once
                JCuda.cudaEventSynchronize(s.uploaded[slot]);
                read(job.base(), r0, n, cols, s.baseViews[slot]);
                read(job.tuned(), r0, n, cols, s.tunedViews[slot]);
                long baseBytes = (long) n * cols * bf.sizeInBytes();
                long tunedBytes = (long) n * cols * tf.sizeInBytes();
                Pointer staged = s.slots[slot].pointer();
                // the device buffers are reused by the next block: its copies queue behind this block's kernels on the stream
                JCuda.cudaMemcpyAsync(w.input().pointer(), staged, baseBytes, cudaMemcpyKind.cudaMemcpyHostToDevice, w.stream().runtime());
                JCuda.cudaMemcpyAsync(w.output().pointer(), staged.withByteOffset(s.half), tunedBytes, cudaMemcpyKind.cudaMemcpyHostToDevice,
                        w.stream().runtime());
                JCuda.cudaEventRecord(s.uploaded[slot], w.stream().runtime());
                Pointer blockDelta = job.delta().at((long) r0 * cols * Sizeof.DOUBLE);
                device.extract().delta(w.stream(), n, cols, Pointer.to(w.input().pointer()), Pointer.to(new int[] {MergeKernels.code(bf)}),
                        Pointer.to(w.output().pointer()), Pointer.to(new int[] {MergeKernels.code(tf)}),
                        Pointer.to(blockDelta), Pointer.to(new long[] {n}), Pointer.to(new long[] {cols}),
                        Pointer.to(new long[] {cols}), Pointer.to(job.firstBad().pointer()), Pointer.to(new long[] {(long) r0 * cols}));
                device.extract().rowSquares(w.stream(), n, Pointer.to(blockDelta), Pointer.to(new long[] {n}), Pointer.to(new long[] {cols}),
                        Pointer.to(new long[] {cols}), Pointer.to(job.rowSquares().at((long) r0 * Sizeof.DOUBLE)));
            }
        } catch (IOException | RuntimeException | Error e) {
            job.stop().set(true);
            failure = e;
            throw e;
        } finally {
            try {
                w.synchronize(); // what this share queued is done before its future is
            } catch (RuntimeException | Error e) {
                if (failure == null) {
                    throw e;
                }
                failure.addSuppressed(e);
            }
        }
    }

    /** Rows [r0, r0 + n) of a source's values into {@code dst} from its index 0: a positional read, or decoded for a quantized source. */
    private static void read(TensorSource source, int r0, int n, int cols, ByteBuffer dst) throws IOException {
        if (!source.isQuantized()) {
            source.readRowsInto(r0, n, cols, dst);
            return;
        }
        try (TensorSource.Bytes b = source.readRows(TensorSource.Form.VALUES, r0, n, cols)) {
            dst.clear();
            dst.put(b.bytes());
        }
    }

    /**
     * Stops the threads (a share still running finishes first) and frees their staging; their
     * workers are the device's, closed with it.
     */
    @Override
    public void close() {
        synchronized (stagings) {
            if (closed) {
                throw new IllegalStateException("ΔW former closed twice");
            }
            closed = true;
        }
        threads.shutdown();
        boolean interrupted = false;
        while (!threads.isTerminated()) {
            try {
                threads.awaitTermination(1, TimeUnit.MINUTES);
            } catch (InterruptedException e) {
                interrupted = true; // still wait: the staging is freed below
            }
        }
        device.bindContext();
        synchronized (stagings) {
            for (Staging s : stagings) {
                s.worker.synchronize();
                s.close();
            }
            stagings.clear();
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }
}
