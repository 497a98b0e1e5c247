package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;

/**
 * What the device requantizations share ({@link CudaRequantization}, {@link CudaByteRequantization}):
 * the rows' merge on the device ({@link CudaTensorMerge}: the factors, the source's upload and
 * dequantization), the merge of a row block into X with its undecided elements settled
 * ({@link #mergeBlock}), the memory each holds for the whole weight ({@link #take}), and the close
 * that releases all of it once. X and W are in the output dtype, the weight's dequantized one.
 */
abstract class DeviceRequantization implements Requantization {
    final CudaBackend backend;
    final CudaDevice device;
    final TensorJob job;
    final CudaTensorMerge merge;
    /** The dtype of W and X: the job's output dtype, which is its source's. */
    final FloatFormat format;
    /** The whole-weight memory {@link #take} handed out, released by {@link #close}. */
    private final List<DeviceMemory> held = new ArrayList<>();
    private boolean closed;

    DeviceRequantization(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        if (job.srcFormat() != job.dstFormat()) {
            throw new IllegalArgumentException(job.out().name() + ": a requantization merges in the weight's own dtype, not "
                    + job.srcFormat().dtype() + " to " + job.dstFormat().dtype());
        }
        this.backend = backend;
        this.device = device;
        this.job = job;
        this.format = job.dstFormat();
        this.merge = new CudaTensorMerge(backend, device, job);
    }

    /**
     * {@code bytes} of device memory held until {@link #close}; when there is none, everything this
     * requantization holds is released before the error goes on (a constructor that fails leaves
     * nothing on the device).
     */
    final DeviceMemory take(long bytes) {
        try {
            DeviceMemory m = device.pool().take(bytes);
            held.add(m);
            return m;
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    @Override
    public TensorSource.Form input() {
        return merge.input();
    }

    @Override
    public int workingBytesPerElement() {
        return format.sizeInBytes(); // a block's W and X are the worker's device buffers, sized by the output dtype
    }

    /**
     * Rows {@code [row0, row0 + rowCount)} merged on worker {@code w}: W from {@code src} into its
     * input buffer, P = s·U·Vᵀ into its wide buffer, X = round(W + P) into its output buffer with
     * every undecided element settled (on the device, or on the host, {@link #settleOnHost}), the
     * block's exactly rounded elements and fallbacks counted into {@code stats}. Returns the block's
     * {overflows, NaNs} of X, which {@code stats} has too.
     */
    final long[] mergeBlock(DeviceWorker w, long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
        long bytes = (long) rowCount * job.cols() * format.sizeInBytes();
        merge.load(w, row0, rowCount, src);
        DeviceFactors f = merge.factors();
        w.mergeRoundExactly(f, format, format, row0, rowCount, job.cols(), job.boundK());
        DeviceWorker.Counts counted = w.counters();
        long overflows = counted.overflows();
        long nans = counted.nans();
        long forHost = DeviceWorker.forHost(f, counted); // a folded tensor's undecided elements are all the host's
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY || forHost > 0) {
            long[] settled = settleOnHost(w, f, row0, rowCount, counted, forHost, bytes, stats);
            overflows = settled[0];
            nans = settled[1];
        } else {
            stats.addExactlyRounded(counted.ambiguous());
        }
        stats.add(0, overflows, nans);
        return new long[] {overflows, nans};
    }

    /**
     * The host's part of a block the device could not settle alone: when more elements were
     * ambiguous than the kernel lists, the CPU engine merges the whole block and X goes up again;
     * otherwise the few elements the device left are recomputed exactly from W (the dequantized
     * block, copied down) into a copy of X, which goes up once. Returns the block's overflows and
     * NaNs after settling.
     */
    private long[] settleOnHost(DeviceWorker w, DeviceFactors f, long row0, int rowCount, DeviceWorker.Counts counted, long forHost, long bytes,
                                BlockStats stats) throws Exception {
        ByteBuffer wHost = w.download(w.input(), bytes);
        ByteBuffer x = ByteBuffer.allocateDirect(Math.toIntExact(bytes)).order(ByteOrder.LITTLE_ENDIAN);
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY) {
            BlockStats s = new BlockStats();
            CpuMerge.mergeRows(job, row0, rowCount, wHost, x, s, null);
            stats.add(s.exactFallbacks(), 0, 0);
            stats.addExactlyRounded(s.exactlyRounded());
            x.position(0).limit(Math.toIntExact(bytes));
            Nf4Kernels.upload(w.stream(), w.output(), x);
            return new long[] {s.overflows(), s.nans()};
        }
        stats.addExactlyRounded(counted.ambiguous() - forHost);
        x.put(w.download(w.output(), bytes));
        ByteBuffer idx = w.forHostElements(f, forHost);
        long overflows = HostSettle.settle(job, row0, wHost, idx, (int) forHost, (e, bits) -> format.putBits(x, e, bits), stats);
        x.position(0).limit(Math.toIntExact(bytes));
        Nf4Kernels.upload(w.stream(), w.output(), x);
        // the kernels counted the ambiguous elements' overflows as they settled them; NaNs are among the others
        return new long[] {counted.overflows() + overflows, counted.nans()};
    }

    @Override
    public final void close() {
        if (closed) {
            return;
        }
        closed = true;
        device.bindContext();
        for (DeviceMemory m : held) {
            m.close();
        }
        merge.close();
        backend.forget(this);
    }
}
