package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.TopSelection;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.Combination;
import org.loramerge.plan.TensorSource;

/**
 * A tensor of the task-arithmetic family (ties, dare_linear, dare_ties, magnitude_prune; docs/
 * FORMATS.md §8.2) on the GPU, with the CPU engine's bytes: every adapter's factors go up once,
 * the selection passes histogram |ΔW| on the device ({@code combine_histogram}, the counts of all
 * blocks added there and read back once per pass), and each block's Δ, W + Δ and rounding are one
 * kernel ({@code combine_round}); the few elements its bound leaves undecided are settled exactly
 * on the host ({@link HostSettle}). A selection whose cut falls inside a run of equal magnitudes
 * needs each element's rank among them, which the device does not keep: its tie pass and the
 * tensor's rows then run on the CPU engine.
 */
final class CudaDenseMerge implements TensorMerge {
    /** Adapters per tensor the kernels hold (kernels/combine.cu LM_MAX_PARTS). */
    static final int MAX_PARTS = 8;
    private static final int HISTOGRAM_BINS = 1 << 16;

    private final CudaBackend backend;
    private final CudaDevice device;
    private final TensorJob job;
    private final DenseCombination dense;
    private final DeviceMemory uAll;
    private final DeviceMemory vtAll;
    private final DeviceMemory ip;
    private final DeviceMemory dp;
    private final DeviceMemory[] histograms;
    private final long[] ipHost;
    /** Whether the current selection pass counts on the device (else on the CPU: a tie pass). */
    private volatile boolean passOnDevice;
    private volatile boolean cutsUploaded;
    private boolean closed;

    /**
     * True when the device path can take {@code job}: a dense combination of at most {@link #MAX_PARTS} adapters on a dense
     * source, written in its own dtype (combine_round reads W in the output's format).
     */
    static boolean fits(TensorJob job) {
        return job.dense() != null && job.dense().terms().size() <= MAX_PARTS && !job.out().source().isQuantized()
                && job.srcFormat() == job.dstFormat();
    }

    CudaDenseMerge(CudaBackend backend, CudaDevice device, TensorJob job) {
        this.backend = backend;
        this.device = device;
        this.job = job;
        this.dense = job.dense();
        device.bindContext();
        List<LowRankTerm> terms = dense.terms();
        int n = terms.size();
        long uLen = 0;
        long vtLen = 0;
        for (LowRankTerm t : terms) {
            uLen += t.u().length;
            vtLen += t.vt().length;
        }
        double[] u = new double[Math.toIntExact(uLen)];
        double[] vt = new double[Math.toIntExact(vtLen)];
        ipHost = new long[3 + 5 * MAX_PARTS];
        double[] dpHost = new double[2 + 2 * MAX_PARTS];
        ipHost[0] = n;
        ipHost[1] = dense.rule().ordinal();
        ipHost[2] = dense.majority() == Combination.MajoritySign.TOTAL ? 0 : 1;
        dpHost[0] = dense.density();
        dpHost[1] = dense.lambda();
        double[] weights = dense.weights();
        int uOff = 0;
        int vtOff = 0;
        for (int a = 0; a < n; a++) {
            LowRankTerm t = terms.get(a);
            System.arraycopy(t.u(), 0, u, uOff, t.u().length);
            System.arraycopy(t.vt(), 0, vt, vtOff, t.vt().length);
            ipHost[3 + a] = uOff;
            ipHost[11 + a] = vtOff;
            ipHost[19 + a] = t.rank();
            ipHost[27 + a] = dense.dareKey(a);
            ipHost[35 + a] = 0; // the cut, once the selection is done
            dpHost[2 + a] = t.scale();
            dpHost[10 + a] = weights[a];
            uOff += t.u().length;
            vtOff += t.vt().length;
        }
        DevicePool pool = device.pool();
        uAll = upload(pool, u);
        vtAll = upload(pool, vt);
        ip = Nf4Kernels.take(pool, (long) ipHost.length * Sizeof.LONG);
        JCuda.cudaMemcpy(ip.pointer(), Pointer.to(ipHost), (long) ipHost.length * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyHostToDevice);
        dp = upload(pool, dpHost);
        histograms = new DeviceMemory[n];
        for (int a = 0; a < n; a++) {
            if (dense.selection(a) != null && !dense.selection(a).done()) {
                histograms[a] = Nf4Kernels.take(pool, (long) HISTOGRAM_BINS * Sizeof.LONG);
                JCuda.cudaMemset(histograms[a].pointer(), 0, (long) HISTOGRAM_BINS * Sizeof.LONG);
            }
        }
        passOnDevice = true;
    }

    private static DeviceMemory upload(DevicePool pool, double[] a) {
        DeviceMemory d = Nf4Kernels.take(pool, Math.max(1, (long) a.length) * Sizeof.DOUBLE);
        JCuda.cudaMemcpy(d.pointer(), Pointer.to(a), (long) a.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyHostToDevice);
        return d;
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
        boolean ties = false;
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            ties |= s != null && !s.done() && s.countingTies();
        }
        passOnDevice = !ties;
        if (ties) {
            dense.countRows(row0, rowCount); // per-row counts of the run of equal keys: rare, on the CPU
            return;
        }
        DeviceWorker w = device.worker();
        int cols = job.cols();
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            if (s == null || s.done()) {
                continue;
            }
            device.combine().histogram(w.stream(), rowCount, cols, Pointer.to(uAll.pointer()), Pointer.to(vtAll.pointer()),
                    Pointer.to(ip.pointer()), Pointer.to(dp.pointer()), Pointer.to(new int[] {a}), Pointer.to(new long[] {row0}),
                    Pointer.to(new long[] {rowCount}), Pointer.to(new long[] {cols}), Pointer.to(new int[] {s.shift()}),
                    Pointer.to(new int[] {s.bits()}), Pointer.to(new long[] {s.prefix()}), Pointer.to(histograms[a].pointer()));
        }
        w.synchronize();
    }

    @Override
    public void finishSelectionPass() {
        if (!passOnDevice) {
            return;
        }
        device.bindContext();
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            if (s == null || s.done()) {
                continue;
            }
            int bins = 1 << s.bits();
            long[] counts = new long[bins];
            JCuda.cudaMemcpy(Pointer.to(counts), histograms[a].pointer(), (long) bins * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            JCuda.cudaMemset(histograms[a].pointer(), 0, (long) HISTOGRAM_BINS * Sizeof.LONG);
            s.add(0, counts);
        }
    }

    /** True when some selection keeps only part of a run of equal magnitudes: the rows then need ranks the device does not keep. */
    private boolean partialTies() {
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            if (s != null && s.hasPartialTies()) {
                return true;
            }
        }
        return false;
    }

    private synchronized void uploadCuts() {
        if (cutsUploaded) {
            return;
        }
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            ipHost[35 + a] = s == null ? 0 : s.keepFrom();
        }
        device.bindContext();
        JCuda.cudaMemcpy(ip.pointer(), Pointer.to(ipHost), (long) ipHost.length * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyHostToDevice);
        cutsUploaded = true;
    }

    @Override
    public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        if (partialTies()) {
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats, null);
            return;
        }
        uploadCuts();
        DeviceWorker w = device.worker();
        FloatFormat fmt = job.dstFormat();
        int cols = job.cols();
        long bytes = (long) rowCount * cols * fmt.sizeInBytes();
        w.loadValues(src, (long) rowCount * cols * job.srcFormat().sizeInBytes());
        w.combineRound(uAll, vtAll, ip, dp, fmt, row0, rowCount, cols);
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
        device.bindContext();
        uAll.close();
        vtAll.close();
        ip.close();
        dp.close();
        for (DeviceMemory h : histograms) {
            if (h != null) {
                h.close();
            }
        }
        backend.forget(this);
    }
}
