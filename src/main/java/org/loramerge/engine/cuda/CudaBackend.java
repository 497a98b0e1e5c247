package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuRequantization;
import org.loramerge.engine.cpu.CpuTensorMerge;
import org.loramerge.plan.Layout;

/**
 * The GPU engine. Each pipeline thread owns a {@link DeviceWorker} (a stream, a cuBLAS handle,
 * pinned and device buffers). Per block: P = s·U·Vᵀ (cuBLAS DGEMM), then v = W + P in fp64
 * rounded once to the output dtype with the fp64 error bound (one fused PTX pass, see
 * {@link DeviceWorker#mergeRound}), and copy back. The few elements whose bound straddles a
 * rounding boundary come back as a list and are recomputed exactly on the host with the CPU
 * engine's code ({@link HostSettle}), so the output is bit for bit the CPU engine's.
 *
 * <p>Tensors the GPU path does not cover (DoRA, token rows, bias terms, several terms, a dtype
 * conversion, a quantized format without device kernels) are merged by the CPU engine inside
 * this backend ({@link #onGpu}); they are small or rare.
 */
public final class CudaBackend implements Backend {
    /** Pipeline threads (and streams) at most: each also copies blocks on the host, so more help until PCIe is full. */
    private static final int MAX_STREAMS = 8;

    private final CudaDevice device;
    private final int streams;
    private final List<PinnedMemory> blockBuffers = new ArrayList<>();
    /** Handles a failed merge may leave open; closed with the backend. */
    private final Set<AutoCloseable> open = new LinkedHashSet<>();
    private boolean closed;

    private CudaBackend(CudaDevice device, int streams) {
        this.device = device;
        this.streams = streams;
    }

    /** Opens device {@code ordinal}; explains precisely why when it cannot. Called by {@code Backends}, by name. */
    public static Backend open(int ordinal, int cpuThreads) throws DeviceUnavailableException {
        int streams = Math.max(2, Math.min(MAX_STREAMS, cpuThreads / 2));
        return new CudaBackend(CudaDevice.open(ordinal, DEFAULT_BLOCK_BYTES, streams), streams);
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
        synchronized (blockBuffers) {
            blockBuffers.add(m);
        }
        return m.buffer();
    }

    /**
     * Whether the GPU path computes this tensor (else the CPU engine does, inside this backend):
     * one low-rank term, no DoRA, token rows or dtype conversion. The source is dense, or NF4
     * (dequantized on the device; an NF4 output is requantized there too), or another quantized
     * format, which the pipeline dequantizes on the CPU with the format's codec before the block
     * goes up as dense values.
     */
    static boolean onGpu(TensorJob job) {
        if (job.srcFormat() == null || job.srcFormat() != job.dstFormat() || job.doraAxis() != null || job.tokenValues() != null) {
            return false;
        }
        // a tensor without terms and with its own dtype is a byte copy and never reaches a backend
        return job.terms().size() == 1 && job.out().terms().get(0).layout() != Layout.BIAS;
    }

    @Override
    public TensorMerge openMerge(TensorJob job) throws IOException {
        if (!onGpu(job)) {
            return new CpuTensorMerge(job);
        }
        return remember(new CudaTensorMerge(this, device, job));
    }

    @Override
    public Requantization openRequantization(TensorJob job) throws IOException {
        if (!onGpu(job) || CudaTensorMerge.deviceNf4(job) == null || !job.out().quantizedOutput().kind().equals("NF4")) {
            return new CpuRequantization(job);
        }
        return remember(new CudaRequantization(this, device, job));
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
