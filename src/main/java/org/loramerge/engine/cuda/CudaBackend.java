package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.LowRankTerm;
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

    private final CudaDevice device;
    private final int streams;
    /** Threads of the CPU engine's work inside this backend (extract's weights too large for the device). */
    private final int cpuThreads;
    private final List<PinnedMemory> blockBuffers = new ArrayList<>();
    /** The buffers {@link #allocateBlockBuffer} handed out, by identity: page-locked, so a block in one goes up without a staging copy. */
    private final Set<ByteBuffer> pinnedViews = Collections.newSetFromMap(new IdentityHashMap<>());
    /** Handles a failed merge may leave open; closed with the backend. */
    private final Set<AutoCloseable> open = new LinkedHashSet<>();
    private boolean closed;

    private CudaBackend(CudaDevice device, int streams, int cpuThreads) {
        this.device = device;
        this.streams = streams;
        this.cpuThreads = cpuThreads;
    }

    /**
     * Opens device {@code ordinal}; explains precisely why when it cannot. Called by {@code Backends}, by name. Its workers
     * take blocks of {@link Tuning#blockBytes} and number {@link Tuning#streams} where that knob is set.
     */
    public static Backend open(int ordinal, int cpuThreads) throws DeviceUnavailableException {
        Tuning tuning = Tuning.current();
        int streams = tuning.streams() > 0 ? tuning.streams() : Math.max(2, Math.min(MAX_STREAMS, cpuThreads / 2));
        return new CudaBackend(CudaDevice.open(ordinal, tuning.blockBytes(), streams), streams, cpuThreads);
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
    public ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        device.bindContext();
        PinnedMemory m = new PinnedMemory(sizeInBytes);
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
     * stored codes and are dequantized on the device ({@link DeviceDequantizer}; an NF4 output is
     * requantized there too), but an AWQ weight whose row blocks would stage more than a block
     * (rows of about a tenth of the block size), which the pipeline dequantizes on the CPU with the
     * format's codec before the block goes up as dense values.
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

    @Override
    public Requantization openRequantization(TensorJob job) throws IOException {
        // requantized on the device: an NF4 weight to NF4 (another format's codec runs on the CPU) whose terms all cover every
        // row (one segment) and without DoRA (whose norms need the whole row first)
        if (!onGpu(job) || job.dense() != null || job.doraAxis() != null || CudaTensorMerge.deviceNf4(job) == null
                || !job.out().quantizedOutput().kind().equals("NF4") || CudaTensorMerge.segments(job.terms(), job.rows()).size() != 1) {
            return new CpuRequantization(job);
        }
        return remember(new CudaRequantization(this, device, job));
    }

    /**
     * ΔW resident on the device ({@link CudaWeightDelta}), or, for a weight too large to keep there
     * ({@link CudaWeightDelta#fits}), the CPU engine's, read from the checkpoints on every pass.
     */
    @Override
    public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws IOException, ExtractException {
        if (!CudaWeightDelta.fits(device, base, tuned, rows, cols)) {
            return CpuWeightDelta.open(name, base, tuned, rows, cols, cpuThreads);
        }
        return CudaWeightDelta.open(device, name, base, tuned, rows, cols);
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
        if (closed) {
            throw new IllegalStateException("backend closed twice");
        }
        closed = true;
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
        device.close();
    }
}
