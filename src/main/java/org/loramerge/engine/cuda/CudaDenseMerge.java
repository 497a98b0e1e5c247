package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;

/**
 * A tensor of the task-arithmetic family (ties, dare_linear, dare_ties, magnitude_prune; docs/
 * FORMATS.md §8.2) on the GPU, with the CPU engine's bytes: every adapter's factors go up once
 * ({@link DeviceCombination}), the selection passes histogram |ΔW| on the device ({@code
 * combine_histogram}, the counts of all blocks added there and read back once per pass), and each
 * block's Δ, W + Δ and rounding are one
 * kernel ({@code combine_round}); the few elements its bound leaves undecided are settled exactly
 * on the host ({@link HostSettle}). A selection whose cut falls inside a run of equal magnitudes
 * needs each element's rank among them, which the device does not keep: its tie pass and the
 * tensor's rows then run on the CPU engine.
 */
final class CudaDenseMerge implements TensorMerge {
    private final CudaBackend backend;
    private final CudaDevice device;
    private final TensorJob job;
    private final DeviceCombination combination;
    private boolean closed;

    /**
     * True when the device path can take {@code job}: a dense combination of at most {@link DeviceCombination#MAX_PARTS} adapters on a dense
     * source, written in its own dtype (combine_round reads W in the output's format).
     */
    static boolean fits(TensorJob job) {
        return job.dense() != null && job.dense().terms().size() <= DeviceCombination.MAX_PARTS && !job.out().source().isQuantized()
                && job.srcFormat() == job.dstFormat();
    }

    CudaDenseMerge(CudaBackend backend, CudaDevice device, TensorJob job) {
        this.backend = backend;
        this.device = device;
        this.job = job;
        this.combination = new DeviceCombination(device, job.dense(), job.cols());
    }

    @Override
    public TensorSource.Form input() {
        return TensorSource.Form.VALUES;
    }

    @Override
    public void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, values, sumSq, sumErr); // no DoRA in a combination; never reached
    }

    @Override
    public void countSelection(long row0, int rowCount) {
        combination.countSelection(row0, rowCount);
    }

    @Override
    public void finishSelectionPass() {
        combination.finishSelectionPass();
    }

    @Override
    public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        if (combination.partialTies()) {
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats, null);
            return;
        }
        combination.uploadCuts();
        DeviceWorker w = device.worker();
        FloatFormat fmt = job.dstFormat();
        int cols = job.cols();
        long bytes = (long) rowCount * cols * fmt.sizeInBytes();
        w.loadValues(src, (long) rowCount * cols * job.srcFormat().sizeInBytes());
        combination.queueRound(w, fmt, row0, rowCount);
        w.copyOutputTo(dst, bytes);
        DeviceWorker.Counts counted = w.counters();
        long ambiguous = counted.ambiguous();
        long overflows = counted.overflows();
        if (ambiguous > DeviceWorker.AMBIGUOUS_CAPACITY) {
            src.position(0);
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats, null);
            return;
        }
        dst.position(0);
        if (ambiguous > 0) {
            ByteBuffer idx = w.ambiguousElements(ambiguous).order(ByteOrder.LITTLE_ENDIAN);
            ByteBuffer out = dst;
            overflows += HostSettle.settle(job, row0, src, idx, (int) ambiguous, (e, b) -> fmt.putBits(out, e, b), stats);
        }
        stats.add(0, overflows, counted.nans());
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        combination.close();
        backend.forget(this);
    }
}
