package org.loramerge.engine.cuda;

import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TopSelection;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.Combination;

/**
 * One dense combination ({@link DenseCombination}) on the device, as the kernels of
 * kernels/combine.cu read it: every adapter's factors in U_all and Vt_all, the small parameters in
 * ip and dp, and a histogram per adapter whose top-D selection is still open. It runs the
 * selection's passes ({@code combine_histogram}, the counts read back once per pass; a pass that
 * counts a run of equal magnitudes per row runs on the host, {@link DenseCombination#countRows})
 * and, once they are done, hands the cuts to the kernels that form Δ. Shared by the merge of the
 * task-arithmetic family ({@link CudaDenseMerge}) and the SVD of PEFT's {@code _svd} methods
 * ({@link CudaWeightDelta#ofCombination}).
 *
 * <p>Public, with its constructor, the selection's steps and the three launches ({@link
 * #queueHistograms}, {@link #queueRound}, {@link #queueDelta}), only so that the JMH benchmark of
 * these kernels (benchmarks/, CudaCombineBenchmark) runs the engine's own launch code with the data
 * already on the device; the engine reaches it through {@link CudaDenseMerge} and
 * {@link CudaWeightDelta}.
 */
public final class DeviceCombination implements AutoCloseable {
    /** Adapters per tensor the kernels hold (kernels/combine.cu LM_MAX_PARTS). */
    static final int MAX_PARTS = 8;
    private static final int HISTOGRAM_BINS = 1 << 16;

    private final CudaDevice device;
    private final DenseCombination dense;
    private final int cols;
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

    /** Uploads {@code dense}, a tensor of {@code cols} columns, of at most {@link #MAX_PARTS} adapters. */
    public DeviceCombination(CudaDevice device, DenseCombination dense, int cols) {
        List<LowRankTerm> terms = dense.terms();
        int n = terms.size();
        if (n > MAX_PARTS) {
            throw new IllegalArgumentException(n + " adapters on one tensor; the kernels hold " + MAX_PARTS);
        }
        this.device = device;
        this.dense = dense;
        this.cols = cols;
        device.bindContext();
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
        // what is taken goes back to the pool if a later allocation fails (a device shared with other work may have no room left)
        Taken taken = new Taken(Taken::settleLegacyStream);
        try {
            uAll = taken.add(upload(pool, u));
            vtAll = taken.add(upload(pool, vt));
            ip = taken.add(Nf4Kernels.take(pool, (long) ipHost.length * Sizeof.LONG));
            JCuda.cudaMemcpy(ip.pointer(), Pointer.to(ipHost), (long) ipHost.length * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyHostToDevice);
            dp = taken.add(upload(pool, dpHost));
            histograms = new DeviceMemory[n];
            for (int a = 0; a < n; a++) {
                if (dense.selection(a) != null && !dense.selection(a).done()) {
                    histograms[a] = taken.add(Nf4Kernels.take(pool, (long) HISTOGRAM_BINS * Sizeof.LONG));
                    JCuda.cudaMemset(histograms[a].pointer(), 0, (long) HISTOGRAM_BINS * Sizeof.LONG);
                }
            }
            // the copies and fills above are queued on the legacy stream: one wait for all of them
            Taken.settleLegacyStream();
        } catch (RuntimeException | Error e) {
            taken.giveBack(e);
            throw e;
        }
        passOnDevice = true;
    }

    private static DeviceMemory upload(DevicePool pool, double[] a) {
        DeviceMemory d = Nf4Kernels.take(pool, Math.max(1, (long) a.length) * Sizeof.DOUBLE);
        JCuda.cudaMemcpy(d.pointer(), Pointer.to(a), (long) a.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyHostToDevice);
        return d;
    }

    DenseCombination dense() {
        return dense;
    }

    /**
     * Counts rows {@code [row0, row0 + rowCount)} for the current selection pass, on the calling
     * thread's worker (or on the host for a tie pass); blocks of one pass may come from several threads.
     */
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
        queueHistograms(w, row0, rowCount);
        w.synchronize();
    }

    /**
     * Queues on {@code w}'s stream the current selection pass's {@code combine_histogram} of every
     * adapter whose selection is open, over rows {@code [row0, row0 + rowCount)}, adding to the
     * device's histograms; does not wait. For a pass that counts on the device (not a tie pass).
     */
    public void queueHistograms(DeviceWorker w, long row0, int rowCount) {
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
    }

    /**
     * Queues on {@code w}'s stream {@code combine_delta}: Δ of rows {@code [row0, row0 + rowCount)}
     * into {@code d} (fp64, row-major, {@code cols} a row), once the cuts are uploaded
     * ({@link #uploadCuts}); does not wait.
     */
    public void queueDelta(DeviceWorker w, long row0, int rowCount, DeviceMemory d) {
        device.combine().delta(w.stream(), rowCount, cols, Pointer.to(uAll.pointer()), Pointer.to(vtAll.pointer()),
                Pointer.to(ip.pointer()), Pointer.to(dp.pointer()), Pointer.to(new long[] {row0}), Pointer.to(new long[] {rowCount}),
                Pointer.to(new long[] {cols}), Pointer.to(new long[] {cols}), Pointer.to(d.pointer()));
    }

    /**
     * Queues on {@code w}'s stream {@code combine_round} of rows {@code [row0, row0 + rowCount)}
     * ({@link DeviceWorker#combineRound}): W of those rows in the worker's input in {@code fmt},
     * out = round(W + Δ) into its output, the ambiguous elements listed; once the cuts are uploaded
     * ({@link #uploadCuts}); does not wait.
     */
    public void queueRound(DeviceWorker w, FloatFormat fmt, long row0, int rowCount) {
        w.combineRound(uAll, vtAll, ip, dp, fmt, row0, rowCount, cols);
    }

    /** Adds the device's histograms of the pass just counted to the selections; the caller then ends the pass ({@link DenseCombination#finishPass}). */
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
        Taken.settleLegacyStream();
    }

    /** True when some selection keeps only part of a run of equal magnitudes: Δ then needs ranks the device does not keep. */
    public boolean partialTies() {
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            if (s != null && s.hasPartialTies()) {
                return true;
            }
        }
        return false;
    }

    /** Hands the finished selections' cuts to the kernels (once; later calls return at once). */
    public synchronized void uploadCuts() {
        if (cutsUploaded) {
            return;
        }
        for (int a = 0; a < dense.terms().size(); a++) {
            TopSelection s = dense.selection(a);
            ipHost[35 + a] = s == null ? 0 : s.keepFrom();
        }
        device.bindContext();
        JCuda.cudaMemcpy(ip.pointer(), Pointer.to(ipHost), (long) ipHost.length * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyHostToDevice);
        Taken.settleLegacyStream();
        cutsUploaded = true;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("device combination closed twice");
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
    }
}
