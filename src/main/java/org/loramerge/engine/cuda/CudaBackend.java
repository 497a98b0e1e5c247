package org.loramerge.engine.cuda;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import jcuda.Sizeof;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.HostCombinedDelta;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.Pools;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.Tuning;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuWeightDelta;
import org.loramerge.engine.cpu.CpuRequantization;
import org.loramerge.engine.cpu.CpuTensorMerge;
import org.loramerge.plan.DoraSpec;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.Layout;
import org.loramerge.plan.TensorSource;
import org.loramerge.plan.TermSpec;

/**
 * The GPU engine. Each pipeline thread owns a {@link DeviceWorker} (a stream, a cuBLAS handle,
 * pinned and device buffers). Per block: P = s·U·Vᵀ (cuBLAS DGEMM), then v = W + P in fp64
 * rounded once to the output dtype with the fp64 error bound (one fused PTX pass, see
 * {@link DeviceWorker#mergeRound}), and copy back. The few elements whose bound straddles a
 * rounding boundary come back as a list and are recomputed exactly on the host with the CPU
 * engine's code ({@link HostSettle}), so the output is bit for bit the CPU engine's.
 *
 * <p>Tensors the GPU path does not cover (DoRA with column norms, token rows, bias terms, terms
 * whose rows overlap only in part, the task-arithmetic
 * family on a 4-bit base, across a dtype conversion or with more than eight adapters, and plain
 * dtype conversions without terms, which are memory copies) are merged by the CPU engine inside
 * this backend ({@link #onGpu}).
 */
public final class CudaBackend implements Backend {
    /** Pipeline threads (and streams) at most: each also copies blocks on the host, so more help until PCIe is full. */
    private static final int MAX_STREAMS = 8;
    /**
     * Pipeline threads at most when the output takes one file's blocks from several threads at once
     * through mappings ({@link org.loramerge.format.WriteMode#MIXED}, the default into a file system in memory,
     * or {@link org.loramerge.format.WriteMode#MAPPED}): there the workers' own copies
     * into the files bound the merge, not PCIe or the disk, and 12 workers on 16 cores wrote a 7B merge from
     * tmpfs to tmpfs faster than 8 (benchmarks/RESULTS.md, "From memory"); each adds a worker's buffers.
     */
    private static final int MAX_STREAMS_PARALLEL_WRITES = 12;
    /**
     * Weights extract decomposes at once by default. One weight's SVD leaves the device idle during
     * its host steps (the l×l Cholesky factors and small SVD, the sketches' transfers and the waits
     * for them: a rank-64 pass over a 4096x11008 ΔW is about 0.2 ms of DGEMM by an H200's fp64 rate
     * and memory bandwidth, estimated, against several round trips to the host), which other
     * weights' passes can fill; each adds a worker's buffers and one ΔW. Four, measured against
     * three and six on the 7B shape (one H200, bench-extract-gpu.sh's SVDS_SWEEP, three reps
     * interleaved: 5.36, 4.97, 6.39 s against 5.67, 5.62, 6.72 s with three and 6.08, 5.18, 6.03 s
     * with six; device memory 3.8-4.1 GiB against 3.7-4.0 and 4.5-5.0).
     */
    private static final int DEFAULT_DECOMPOSITIONS = 4;
    /** Weights extract forms ahead of those decomposed: the forming threads go on while a weight of another shape is slower to decompose. */
    private static final int DELTAS_AHEAD = 2;

    private final CudaDevice device;
    private final int streams;
    /** Threads of the CPU engine's work inside this backend (extract's weights too large for the device). */
    private final int cpuThreads;
    private final List<PinnedMemory> blockBuffers = new ArrayList<>();
    /** The buffers {@link #allocateBlockBuffer} handed out, by identity: page-locked, so a block in one goes up without a staging copy. */
    private final Set<ByteBuffer> pinnedViews = Collections.newSetFromMap(new IdentityHashMap<>());
    /** Handles a failed merge may leave open; closed with the backend. */
    private final Set<AutoCloseable> open = new LinkedHashSet<>();
    /** Weights extract decomposes at once. */
    private final int decompositions;
    /**
     * Device memory of the ΔW extract has open and of combine's dense Δ: {@link
     * CudaWeightDelta#DELTA_BUDGET_BYTES} at most by default.
     */
    private final DeltaArena<DeviceMemory> deltas;
    /** extract's forming threads, started by the first weight. */
    private DeltaFormer former;
    private boolean closed;

    private CudaBackend(CudaDevice device, int streams, int cpuThreads, int decompositions, long deltaBudgetBytes) {
        this.device = device;
        this.streams = streams;
        this.cpuThreads = cpuThreads;
        this.decompositions = decompositions;
        this.deltas = new DeltaArena<>(deltaBudgetBytes, new DeltaArena.Allocator<>() {
            @Override
            public DeviceMemory allocate(long sizeInBytes) {
                device.bindContext();
                try {
                    return new DeviceMemory(sizeInBytes);
                } catch (RuntimeException e) {
                    throw device.outOfMemoryOr(e);
                }
            }

            @Override
            public void free(DeviceMemory buffer) {
                device.bindContext();
                buffer.close();
            }
        });
    }

    /**
     * Opens device {@code ordinal}; explains precisely why when it cannot. Its workers take blocks of
     * {@link Tuning#blockBytes} and number {@link Tuning#streams} where that knob is set; else, for a
     * merge whose output takes one file's blocks from several threads at once ({@code parallelWrites}),
     * three quarters of the CPU threads up to {@value #MAX_STREAMS_PARALLEL_WRITES}, and half of them
     * up to {@value #MAX_STREAMS} for every other output. Called by {@code Backends}, by name.
     */
    public static Backend open(int ordinal, int cpuThreads, boolean parallelWrites) throws DeviceUnavailableException {
        return open(ordinal, cpuThreads, CudaWeightDelta.DELTA_BUDGET_BYTES, parallelWrites);
    }

    /** {@link #open(int, int, boolean)} with another budget for the dense ΔW (for the GPU tests of a device with little room). */
    static CudaBackend open(int ordinal, int cpuThreads, long deltaBudgetBytes) throws DeviceUnavailableException {
        return open(ordinal, cpuThreads, deltaBudgetBytes, false);
    }

    private static CudaBackend open(int ordinal, int cpuThreads, long deltaBudgetBytes, boolean parallelWrites) throws DeviceUnavailableException {
        Tuning tuning = Tuning.current();
        int streams = tuning.streams() > 0 ? tuning.streams() : defaultStreams(cpuThreads, parallelWrites);
        int svds = tuning.svds() > 0 ? tuning.svds() : DEFAULT_DECOMPOSITIONS;
        return new CudaBackend(CudaDevice.open(ordinal, tuning.blockBytes(), streams), streams, cpuThreads, svds, deltaBudgetBytes);
    }

    /** The workers (and streams) of an engine on a machine of {@code cpuThreads}, without the knob. */
    static int defaultStreams(int cpuThreads, boolean parallelWrites) {
        return parallelWrites ? Math.max(2, Math.min(MAX_STREAMS_PARALLEL_WRITES, cpuThreads * 3 / 4))
                : Math.max(2, Math.min(MAX_STREAMS, cpuThreads / 2));
    }

    @Override
    public String describe() {
        return device.description();
    }

    @Override
    public int parallelism() {
        return streams;
    }

    /** The device, for tests that drive it directly. */
    CudaDevice device() {
        return device;
    }

    @Override
    public boolean readsIntoBlockBuffers() {
        return true;
    }

    @Override
    public ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        device.bindContext();
        return keep(new PinnedMemory(sizeInBytes));
    }

    /**
     * {@link #allocateBlockBuffer} {@code count} times, on up to {@value #PINNING_THREADS} threads at
     * once: registering page-locked memory scales with the threads that do it ({@link PinnedMemory}),
     * so a merge's 26 blocks of 8 MiB are ready in about 20 ms instead of 70-130. A failure frees
     * what was made and is thrown.
     */
    @Override
    public List<ByteBuffer> allocateBlockBuffers(int count, int sizeInBytes) {
        PinnedMemory[] made = new PinnedMemory[count];
        AtomicInteger next = new AtomicInteger();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Runnable pin = () -> {
            try {
                device.bindContext();
                for (int i = next.getAndIncrement(); i < count && failure.get() == null; i = next.getAndIncrement()) {
                    made[i] = new PinnedMemory(sizeInBytes);
                }
            } catch (RuntimeException | Error e) {
                failure.compareAndSet(null, e);
            }
        };
        Thread[] helpers = new Thread[Math.max(0, Math.min(count, Math.min(cpuThreads, PINNING_THREADS)) - 1)];
        for (int t = 0; t < helpers.length && failure.get() == null; t++) {
            Thread h = new Thread(pin, "loramerge-pinning");
            h.setDaemon(true);
            try {
                h.start();
                helpers[t] = h;
            } catch (OutOfMemoryError e) {
                failure.compareAndSet(null, e); // no thread to be had: those started stop, and what they made is freed
            }
        }
        pin.run();
        for (Thread t : helpers) {
            if (t != null) {
                Pools.awaitUninterruptibly(t::join); // what they make is freed or handed out below
            }
        }
        Throwable failed = failure.get();
        if (failed != null) {
            for (PinnedMemory m : made) {
                if (m != null) {
                    m.close();
                }
            }
            if (failed instanceof Error) {
                throw (Error) failed;
            }
            throw (RuntimeException) failed;
        }
        List<ByteBuffer> views = new ArrayList<>(count);
        for (PinnedMemory m : made) {
            views.add(keep(m));
        }
        return views;
    }

    /** Threads {@link #allocateBlockBuffers} pins memory on at most. */
    private static final int PINNING_THREADS = 16;

    /** Keeps {@code m} until the engine closes and hands out its view as a block buffer. */
    private ByteBuffer keep(PinnedMemory m) {
        ByteBuffer view = m.buffer();
        synchronized (blockBuffers) {
            blockBuffers.add(m);
            pinnedViews.add(view);
        }
        return view;
    }

    /**
     * Whether {@code b} is a buffer {@link #allocateBlockBuffer} handed out (page-locked): rows the
     * pipeline read into one ({@code -Dloramerge.read=pread}) go up from there, asynchronously.
     */
    boolean isBlockBuffer(ByteBuffer b) {
        synchronized (blockBuffers) {
            return pinnedViews.contains(b);
        }
    }

    /**
     * Whether the GPU path computes this tensor (else the CPU engine does, inside this backend):
     * low-rank terms whose rows split into segments ({@link CudaTensorMerge#segments}: several
     * terms on the same rows, from combined adapters, go up as one, {@link DeviceFactors#of}; an MoE
     * expert stack's terms, each on its expert's rows, one segment per expert), DoRA with row norms
     * (one term) or none, no token rows or bias term, converted to another dtype or not; or a dense
     * combination of the task-arithmetic family ({@link CudaDenseMerge#fits}). The source is dense,
     * or quantized: bitsandbytes NF4, FP4 and LLM.int8, FP8, GPTQ and AWQ weights go up as their
     * stored codes and are dequantized on the device ({@link DeviceDequantizer}; an NF4, FP4, FP8
     * or int8 output is requantized there too, {@link #openRequantization}), but an AWQ weight whose
     * row blocks would stage more than a block (rows of about a tenth of the block size), which the
     * pipeline dequantizes on the CPU with the format's codec before the block goes up as dense values.
     */
    static boolean onGpu(TensorJob job) {
        if (job.srcFormat() == null || job.dstFormat() == null || job.doraAxis() == DoraSpec.Axis.COLUMN || job.tokenValues() != null) {
            return false;
        }
        for (TermSpec t : job.out().terms()) {
            if (t.layout() == Layout.BIAS) {
                return false;
            }
        }
        // a tensor without terms and with its own dtype is a byte copy and never reaches a backend
        if (job.dense() != null) {
            return CudaDenseMerge.fits(job);
        }
        if (job.terms().isEmpty()) {
            return false;
        }
        List<List<LowRankTerm>> segments = CudaTensorMerge.segments(job.terms(), job.rows());
        if (segments == null) {
            return false;
        }
        for (List<LowRankTerm> segment : segments) {
            // DoRA's row norms run on one term's factors; several terms fold only within the bound (DeviceFactors.foldable)
            if (segment.size() > 1 && (job.doraAxis() != null || !DeviceFactors.foldable(segment))) {
                return false;
            }
        }
        return true;
    }

    @Override
    public TensorMerge openMerge(TensorJob job) throws IOException {
        if (!onGpu(job)) {
            return new CpuTensorMerge(job);
        }
        if (job.dense() != null) {
            return remember(new CudaDenseMerge(this, device, job));
        }
        return remember(new CudaTensorMerge(this, device, job));
    }

    /** Where {@link #openRequantization} requantizes a weight. */
    enum RequantizedOn {
        /** {@link CudaRequantization}: NF4 or FP4 on the device. */
        DEVICE_4BIT,
        /** {@link CudaByteRequantization}: FP8 or int8 on the device. */
        DEVICE_BYTES,
        /** {@link CudaFp8TensorRequantization}: FP8 with one scale for the whole tensor on the device. */
        DEVICE_FP8_TENSOR,
        /** The CPU engine, inside this backend. */
        CPU
    }

    /**
     * Where a weight is requantized: on the device when its merge is (onGpu), its terms all cover
     * every row (one segment) and there is no DoRA (whose norms need the whole row first), or it has
     * no terms at all (a weight the adapter leaves alone that changes format: its merge is X = W, one
     * term of zeros, CudaTensorMerge#zeroTerm), and its
     * output is NF4 or FP4 from any base the device merges ({@link CudaRequantization#covers}: NF4
     * and FP4 with their own settings, NF4 from GPTQ or AWQ, whose smallest band of whole quantization
     * blocks fits a worker's buffers of {@code blockBytes}), FP8 with a scale per block, row or
     * group (its own, or 128x128 blocks from GPTQ or AWQ), or int8 ({@link CudaByteRequantization#covers},
     * which also needs a band of quantization blocks within a worker's buffers of {@code blockBytes}),
     * or FP8 with one scale for the whole tensor ({@link CudaFp8TensorRequantization#covers}: the whole
     * merged weight kept on the device, within its memory cap). The CPU engine requantizes the others
     * inside this backend.
     */
    static RequantizedOn requantizedOn(TensorJob job, int blockBytes) {
        if (job.terms().isEmpty() && job.dense() == null && job.doraAxis() == null && job.tokenValues() == null && job.srcFormat() != null) {
            // a weight the adapter leaves alone, requantized only because its format changes (NF4 or FP8 from GPTQ or AWQ): X = W
            return CudaRequantization.covers(job, blockBytes) ? RequantizedOn.DEVICE_4BIT
                    : CudaByteRequantization.covers(job, blockBytes) ? RequantizedOn.DEVICE_BYTES : RequantizedOn.CPU;
        }
        if (!onGpu(job) || job.dense() != null || job.doraAxis() != null || CudaTensorMerge.segments(job.terms(), job.rows()).size() != 1) {
            return RequantizedOn.CPU;
        }
        if (CudaRequantization.covers(job, blockBytes)) {
            return RequantizedOn.DEVICE_4BIT;
        }
        if (CudaByteRequantization.covers(job, blockBytes)) {
            return RequantizedOn.DEVICE_BYTES;
        }
        return CudaFp8TensorRequantization.covers(job, blockBytes) ? RequantizedOn.DEVICE_FP8_TENSOR : RequantizedOn.CPU;
    }

    /** Requantized where {@link #requantizedOn} says. */
    @Override
    public Requantization openRequantization(TensorJob job) throws IOException {
        switch (requantizedOn(job, device.blockBytes())) {
            case DEVICE_4BIT:
                return remember(new CudaRequantization(this, device, job));
            case DEVICE_BYTES:
                return remember(new CudaByteRequantization(this, device, job));
            case DEVICE_FP8_TENSOR:
                try {
                    return remember(new CudaFp8TensorRequantization(this, device, job));
                } catch (RuntimeException e) {
                    RuntimeException r = device.outOfMemoryOr(e);
                    if (r instanceof DeviceOutOfMemoryException) {
                        // the whole weight finds no room beside the device's other work (the constructor gave back what it
                        // took): the CPU codec requantizes it, with the same bytes
                        return new CpuRequantization(job);
                    }
                    throw r;
                }
            default:
                return new CpuRequantization(job);
        }
    }

    /**
     * ΔW resident on the device ({@link CudaWeightDelta}, formed by this backend's forming threads
     * in device memory of its ΔW budget, waiting for room there), or, for a weight too large to keep
     * there ({@link CudaWeightDelta#fits}), the CPU engine's, read from the checkpoints on every pass.
     */
    @Override
    public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols)
            throws IOException, ExtractException, InterruptedException {
        if (!CudaWeightDelta.fits(device, base, tuned, rows, cols)) {
            return CpuWeightDelta.open(name, base, tuned, rows, cols, cpuThreads);
        }
        return CudaWeightDelta.open(device, former(), deltas, name, base, tuned, rows, cols);
    }

    /** The forming threads, one per stream, started on first use. */
    private synchronized DeltaFormer former() {
        if (closed) {
            throw new IllegalStateException("backend used after close");
        }
        if (former == null) {
            former = new DeltaFormer(device, streams);
        }
        return former;
    }

    @Override
    public int deltaDecompositions() {
        return decompositions;
    }

    @Override
    public int deltasAhead() {
        return DELTAS_AHEAD;
    }

    /** Bytes of ΔW open now, extract's and combine's (for the GPU tests: 0 once every weight is closed). */
    long deltaBytesOpen() {
        return deltas.heldBytes();
    }

    /**
     * The dense Δ of a PEFT {@code _svd} combination formed and decomposed on the device ({@link
     * CudaWeightDelta#ofCombination}) in memory of the ΔW budget, waiting for room there as
     * extract's weights do, or, for one larger than the device keeps or of more adapters than the
     * kernels hold ({@link CudaWeightDelta#fits(DenseCombination, long, long)}), the CPU engine's,
     * recomputed on the host for every pass.
     *
     * @throws DeviceOutOfMemoryException when the device has no room for Δ or its buffers (it is
     *                                    shared, or smaller than the budget): combine then
     *                                    decomposes this module on the host
     */
    @Override
    public WeightDelta openCombination(DenseCombination dense, int rows, int cols) throws IOException {
        if (!CudaWeightDelta.fits(dense, rows, cols) || !deltas.fits((long) rows * cols * Sizeof.DOUBLE)) {
            return HostCombinedDelta.open(dense, rows, cols);
        }
        try {
            return CudaWeightDelta.ofCombination(device, deltas, dense, rows, cols);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new InterruptedIOException(dense.spec().name() + ": interrupted while waiting for device memory for its dense delta");
        } catch (RuntimeException e) {
            throw device.outOfMemoryOr(e);
        }
    }

    private <T extends AutoCloseable> T remember(T handle) {
        synchronized (open) {
            open.add(handle);
        }
        return handle;
    }

    /** A handle closed itself. */
    void forget(AutoCloseable handle) {
        synchronized (open) {
            open.remove(handle);
        }
    }

    @Override
    public void close() {
        DeltaFormer forming;
        synchronized (this) {
            if (closed) {
                throw new IllegalStateException("backend closed twice");
            }
            closed = true;
            forming = former;
        }
        if (forming != null) {
            forming.close(); // its threads end and their streams are idle before the device goes
        }
        device.synchronizeAll();
        List<AutoCloseable> left;
        synchronized (open) {
            left = new ArrayList<>(open);
        }
        for (AutoCloseable h : left) {
            try {
                h.close(); // left open by a failed merge
            } catch (Exception e) {
                throw new IllegalStateException("closing a GPU tensor handle failed", e);
            }
        }
        synchronized (blockBuffers) {
            for (PinnedMemory m : blockBuffers) {
                m.close();
            }
        }
        deltas.close(); // a ΔW still open is freed when it is closed, or with the device's context
        device.close();
    }
}
