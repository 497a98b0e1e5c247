package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DeltaRows;
import org.loramerge.engine.Pools;
import org.loramerge.engine.WeightDelta;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.TensorInfo;
import org.loramerge.linalg.Gram;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Svd;
import org.loramerge.linalg.SymmetricEigen;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.ExtractOptions;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.Layout;
import org.loramerge.plan.TensorSource;

/**
 * Runs an {@link ExtractPlan}: per target weight, ΔW = tuned − base is formed from the two
 * checkpoints and checked by the backend ({@link Backend#openDelta}: streamed from the checkpoints
 * on every pass on the CPU, {@link DeltaRows}; resident in device memory on the GPU), decomposed by
 * the randomized SVD ({@link RandomizedSvd}, on the backend's device), split into lora_B·lora_A
 * with √σ on each side, rounded once to the factor dtype and measured against ΔW; every other
 * tensor is compared meanwhile, and a changed one is saved whole or reported. One thread forms the
 * weights in order, each once there is room for it ({@link Backend#deltaDecompositions} decomposed
 * and {@link Backend#deltasAhead} formed ahead at most); {@link Backend#deltaDecompositions}
 * threads decompose them, taking them in order; others compare. Each weight's factors are the
 * same bits however many are in flight, and the results are gathered in target order. A failure
 * is reported in that order, the targets' first; the weights not yet formed are then skipped and
 * every ΔW formed is closed before the run returns. The adapter folder is then written and
 * committed at once ({@link AdapterWriter}); on any failure nothing appears. Memory: per weight in
 * flight its sketches ((rows + cols)·(rank + oversampling) doubles) and row blocks, plus the
 * factors written so far; on the GPU also the ΔW in flight in fp64 in device memory, within the
 * engine's budget.
 */
public final class ExtractRunner {
    /**
     * Knobs of a run.
     *
     * @param svd           the randomized SVD's settings
     * @param checkOptimal   compute each module's exact Eckart–Young optimum (a Gram matrix and its
     *                       eigenvalues: slow, for checking the SVD)
     * @param compareThreads threads that compare the untargeted tensors ({@link #COMPARE_THREADS} by default)
     */
    public record Options(RandomizedSvd.Options svd, boolean checkOptimal, int compareThreads) {
        public Options(RandomizedSvd.Options svd, boolean checkOptimal) {
            this(svd, checkOptimal, COMPARE_THREADS);
        }
    }

    private ExtractRunner() {
    }

    public static ExtractReport run(ExtractPlan plan, Backend backend, AtomicOutput out, Options options, Progress progress) throws Exception {
        long start = System.nanoTime();
        ExtractOptions asked = plan.options();
        ExtractReport report = new ExtractReport();
        report.threads = options.svd().threads();
        report.oversampling = options.svd().oversampling();
        report.powerIterations = options.svd().powerIterations();
        report.seed = options.svd().seed();
        if (asked.energy() == null) {
            report.rank = asked.rank();
        } else {
            report.energy = asked.energy();
            report.maxRank = asked.maxRank();
        }
        report.warnings.addAll(plan.warnings());
        List<AdapterWriter.Tensor> tensors = new ArrayList<>();
        Map<String, Integer> ranks = new LinkedHashMap<>();
        List<String> onCpu = new ArrayList<>();
        report.svdDevice = backend.describe().split(" ")[0]; // describe() begins with the device: "cpu (16 threads)", "cuda:0 NVIDIA H200"
        double deltaSum = 0;
        double errorSum = 0;
        double keptSum = 0;
        List<ExtractPlan.Target> targets = plan.targets();
        int decomposers = Math.max(1, backend.deltaDecompositions());
        // the weights open at once: those decomposed and those formed ahead of them
        Semaphore room = new Semaphore(decomposers + Math.max(1, backend.deltasAhead()));
        AtomicBoolean failed = new AtomicBoolean();
        Clocks clocks = new Clocks();
        // one thread forms the weights in order (the engine spreads a weight over its own threads), each once there is room for it
        ExecutorService opener = Executors.newSingleThreadExecutor(r -> {
            Thread th = new Thread(r, "loramerge-extract-read");
            th.setDaemon(true);
            return th;
        });
        AtomicInteger svdThreads = new AtomicInteger();
        ExecutorService decomposer = Executors.newFixedThreadPool(decomposers, r -> {
            Thread th = new Thread(r, "loramerge-extract-svd-" + svdThreads.incrementAndGet());
            th.setDaemon(true);
            return th;
        });
        // the other tensors are compared meanwhile on a thread of their own (on the CPU: a pass over the embeddings and norms)
        ExecutorService comparer = Executors.newSingleThreadExecutor(r -> {
            Thread th = new Thread(r, "loramerge-extract-compare");
            th.setDaemon(true);
            return th;
        });
        List<Future<Extracted>> extracted = new ArrayList<>();
        Future<Map<ExtractPlan.Other, Double>> comparisons = null;
        Map<ExtractPlan.Other, Double> compared;
        boolean done = false;
        try {
            for (ExtractPlan.Target t : targets) {
                Future<WeightDelta> opened = opener.submit(() -> openWhenRoom(backend, t, room, failed, clocks));
                // a fixed pool takes its tasks in order: the weights are decomposed in the order they are formed
                extracted.add(decomposer.submit(() -> decompose(t, opened, asked, options, room, failed, clocks)));
            }
            comparisons = comparer.submit(() -> {
                long t0 = System.nanoTime();
                try {
                    return compareAll(plan.others(), options.compareThreads());
                } finally {
                    clocks.comparing.addAndGet(System.nanoTime() - t0);
                }
            });
            for (int i = 0; i < targets.size(); i++) {
                ExtractPlan.Target t = targets.get(i);
                Extracted e = BlockExecutor.get(extracted.get(i));
                if (e.module() == null) {
                    report.unchangedModules.add(t.module());
                } else {
                    ExtractReport.Module m = e.module();
                    report.modules.add(m);
                    tensors.addAll(e.tensors());
                    ranks.put(t.module(), m.rank());
                    deltaSum += e.deltaSquared();
                    errorSum += m.relativeError() * m.relativeError() * e.deltaSquared();
                    keptSum += m.energyKept() * e.deltaSquared();
                    if (!e.device().equals(report.svdDevice)) {
                        onCpu.add(t.module());
                    }
                }
                progress.addBytes(t.base().info().sizeInBytes());
                progress.tensorDone();
            }
            long t0 = System.nanoTime();
            compared = BlockExecutor.get(comparisons);
            clocks.waitingForComparisons = System.nanoTime() - t0;
            done = true;
        } finally {
            if (!done) {
                // the first failure in target order is being thrown: the weights not yet formed are skipped (the opener is
                // let through at once), and every ΔW formed is closed by its decomposing task, which is waited for
                failed.set(true);
                room.release(targets.size() + 1);
                for (Future<Extracted> f : extracted) {
                    finishQuietly(f);
                }
                if (comparisons != null) {
                    finishQuietly(comparisons); // it reads the checkpoints, which the caller closes next
                }
            }
            opener.shutdown();
            decomposer.shutdown();
            comparer.shutdown();
        }
        if (!onCpu.isEmpty()) {
            report.notes.add(onCpu.size() + " weights too large to keep in the memory of " + report.svdDevice
                    + " (ΔW in fp64) were decomposed on the CPU: " + String.join(", ", onCpu));
        }
        report.modulesExtracted = report.modules.size();
        report.relativeError = deltaSum == 0 ? 0 : Math.sqrt(errorSum / deltaSum);
        report.energyKept = deltaSum == 0 ? 1 : keptSum / deltaSum;

        long writing = System.nanoTime();
        Set<String> modulesToSave = new LinkedHashSet<>();
        boolean loraOnlyBias = others(plan, compared, ranks.keySet(), report, tensors, modulesToSave, progress);
        if (report.modules.isEmpty() && report.changes.isEmpty()) {
            throw new ExtractException(ExtractException.Reason.IDENTICAL, "the tuned model and the base hold the same values in every tensor: "
                    + "there is nothing to extract, and nothing was written. Check that --tuned names the fine-tuned model");
        }
        if (report.modules.isEmpty() && tensors.isEmpty()) {
            report.warnings.add("no targeted weight changed and every change is only reported: the adapter holds no tensor");
        }
        long bytes = 0;
        for (AdapterWriter.Tensor x : tensors) {
            bytes += TensorInfo.numElements(x.shape()) * x.dtype().sizeInBytes();
        }
        report.adapterBytes = bytes;
        AdapterWriter.write(out, plan.adapterConfig(ranks, modulesToSave, loraOnlyBias), tensors);
        progress.finish();
        report.output = out.target().toString();
        long end = System.nanoTime();
        report.seconds = (end - start) / 1e9;
        report.timing = clocks.timing(decomposers, (end - writing) / 1e9);
        return report;
    }

    /** Where the time of the overlapped stages went, in nanoseconds; summed over the threads of a stage. */
    private static final class Clocks {
        final AtomicLong forming = new AtomicLong();
        final AtomicLong waitingForRoom = new AtomicLong();
        final AtomicLong waitingForDelta = new AtomicLong();
        final AtomicLong decomposing = new AtomicLong();
        /** The part of {@link #decomposing} in the randomized SVD itself. */
        final AtomicLong decomposingSvd = new AtomicLong();
        final AtomicLong comparing = new AtomicLong();
        long waitingForComparisons;

        /**
         * The report's timing: the decomposing threads' times per thread, and the stage that bounds
         * the run, the one the others waited for longest: forming when the decomposing threads
         * waited for ΔW, decomposing when the forming waited for room, comparing when the end
         * waited for it.
         */
        ExtractReport.Timing timing(int decomposers, double write) {
            double waitForDelta = waitingForDelta.get() / 1e9 / decomposers;
            double waitForRoom = waitingForRoom.get() / 1e9;
            double waitForCompare = waitingForComparisons / 1e9;
            String bound = waitForCompare > Math.max(waitForDelta, waitForRoom) ? "compareOthers"
                    : waitForRoom > waitForDelta ? "decompose" : "formDelta";
            return new ExtractReport.Timing(forming.get() / 1e9, waitForDelta, decomposing.get() / 1e9 / decomposers,
                    decomposingSvd.get() / 1e9 / decomposers, comparing.get() / 1e9,
                    write, waitForRoom, waitForCompare, decomposers, bound);
        }
    }

    /** One target's outcome: its module (null when ΔW is zero), its factors, ‖ΔW‖² and where it was decomposed. */
    private record Extracted(ExtractReport.Module module, List<AdapterWriter.Tensor> tensors, double deltaSquared, String device) {
    }

    /**
     * On the forming thread: the target's ΔW once there is room for it (null when the run already
     * failed: the weight is skipped). The room taken is given back by {@link #decompose}, or here
     * when nothing was opened.
     */
    private static WeightDelta openWhenRoom(Backend backend, ExtractPlan.Target t, Semaphore room, AtomicBoolean failed, Clocks clocks)
            throws Exception {
        long t0 = System.nanoTime();
        room.acquire();
        clocks.waitingForRoom.addAndGet(System.nanoTime() - t0);
        boolean opened = false;
        try {
            if (failed.get()) {
                return null;
            }
            WeightDelta d = open(backend, t, clocks.forming);
            opened = true;
            return d;
        } finally {
            if (!opened) {
                room.release();
            }
        }
    }

    /**
     * On a decomposing thread: waits for the target's ΔW, decomposes it unless the run failed
     * meanwhile, closes it and gives its room back. A failure to open it is this target's.
     */
    private static Extracted decompose(ExtractPlan.Target t, Future<WeightDelta> opened, ExtractOptions asked, Options options, Semaphore room,
                                       AtomicBoolean failed, Clocks clocks) throws Exception {
        long t0 = System.nanoTime();
        WeightDelta delta;
        try {
            delta = BlockExecutor.get(opened);
        } finally {
            clocks.waitingForDelta.addAndGet(System.nanoTime() - t0);
        }
        if (delta == null) {
            return null;
        }
        long t1 = System.nanoTime();
        try (WeightDelta d = delta) {
            if (failed.get()) {
                return null;
            }
            if (d.deltaSquared() == 0) {
                return new Extracted(null, List.of(), 0, d.device());
            }
            List<AdapterWriter.Tensor> tensors = new ArrayList<>();
            ExtractReport.Module m = extract(t, d, asked, options, tensors, clocks.decomposingSvd);
            return new Extracted(m, tensors, d.deltaSquared(), d.device());
        } finally {
            room.release(); // after close: its device memory is free
            clocks.decomposing.addAndGet(System.nanoTime() - t1);
        }
    }

    /** The target's ΔW, its time added to {@code forming}. */
    private static WeightDelta open(Backend backend, ExtractPlan.Target t, AtomicLong forming) throws Exception {
        long t0 = System.nanoTime();
        try {
            return backend.openDelta(t.weightName(), t.base(), t.tuned(), t.rows(), t.cols());
        } finally {
            forming.addAndGet(System.nanoTime() - t0);
        }
    }

    /** After a failure: waits for {@code f} to end, its own failure being the lesser news. */
    private static void finishQuietly(Future<?> f) {
        try {
            f.get();
        } catch (ExecutionException e) {
            // the run already failed
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * Threads that compare the other tensors: half the cores, the rest left to forming ΔW. One
     * thread took 43 s over the 192 untargeted tensors of a 7B-shaped fine-tune (12 GB of each
     * checkpoint) while the 32 targeted weights took 2 s.
     */
    static final int COMPARE_THREADS = Math.max(1, Runtime.getRuntime().availableProcessors() / 2);

    /**
     * {@link #compare} of every tensor, on {@code threads} threads; the first bad one in order fails
     * it, and those not started are cancelled.
     */
    static Map<ExtractPlan.Other, Double> compareAll(List<ExtractPlan.Other> others, int threads) throws Exception {
        Map<ExtractPlan.Other, Double> out = new LinkedHashMap<>();
        if (others.isEmpty()) {
            return out;
        }
        ExecutorService pool = Executors.newFixedThreadPool(Math.max(1, Math.min(threads, others.size())), r -> {
            Thread th = new Thread(r, "loramerge-extract-compare");
            th.setDaemon(true);
            return th;
        });
        List<Future<Double>> results = new ArrayList<>();
        try {
            for (ExtractPlan.Other o : others) {
                results.add(pool.submit(() -> compare(o)));
            }
            for (int i = 0; i < others.size(); i++) {
                out.put(others.get(i), BlockExecutor.get(results.get(i)));
            }
            return out;
        } finally {
            // the comparisons read the checkpoints, which the caller closes after this returns: none may still be running
            Pools.cancelAndAwait(pool, results);
        }
    }

    /** One target's SVD, factors and measurements; the factors are added to {@code tensors}. */
    private static ExtractReport.Module extract(ExtractPlan.Target t, WeightDelta delta, ExtractOptions asked, Options options,
                                                List<AdapterWriter.Tensor> tensors, AtomicLong svdClock) throws IOException, ExtractException {
        long t0 = System.nanoTime();
        RandomizedSvd.Result res;
        try {
            res = delta.svd(asked.sketchRank(), options.svd());
        } finally {
            svdClock.addAndGet(System.nanoTime() - t0);
        }
        int r = asked.energy() == null ? res.svd().rank() : Math.max(1, res.rankKeeping(asked.energy()));
        Svd svd = r == res.svd().rank() ? res.svd() : res.svd().truncate(r); // read only: no copy of the factors where all are kept
        int m = t.rows();
        int n = t.cols();
        FloatFormat f = FloatFormat.of(t.factorType());
        // ΔW ≈ U_w·V_wᵀ with U_w = U·√Σ [m, r] and V_wᵀ = √Σ·Vᵀ [r, n], each rounded once to the factor dtype
        double[] roots = new double[r];
        for (int k = 0; k < r; k++) {
            roots[k] = Math.sqrt(svd.sigma()[k]);
        }
        // in the arrays' order, row by row (U is m×r, as U_w)
        double[] u = svd.u().data();
        Matrix uw = Matrix.zeros(m, r);
        double[] uwData = uw.data();
        for (int i = 0, o = 0; i < m; i++) {
            for (int k = 0; k < r; k++, o++) {
                uwData[o] = f.round(u[o] * roots[k]);
            }
        }
        double[] vt = svd.vt().data();
        Matrix vtw = Matrix.zeros(r, n);
        double[] vtwData = vtw.data();
        for (int k = 0, o = 0; k < r; k++) {
            double root = roots[k];
            for (int j = 0; j < n; j++, o++) {
                vtwData[o] = f.round(vt[o] * root);
            }
        }
        checkFinite(t, uw, f);
        checkFinite(t, vtw, f);
        if (t.layout() == Layout.LINEAR) {
            tensors.add(new AdapterWriter.Tensor(t.keyB(), t.factorType(), t.shapeB(r), AdapterWriter.bytes(encode(uw, f))));
            tensors.add(new AdapterWriter.Tensor(t.keyA(), t.factorType(), t.shapeA(r), AdapterWriter.bytes(encode(vtw, f))));
        } else {
            // the weight holds (B·A)ᵀ: lora_B = V_w [n, r], lora_A = U_wᵀ [r, m]
            tensors.add(new AdapterWriter.Tensor(t.keyB(), t.factorType(), t.shapeB(r), AdapterWriter.bytes(encode(vtw.transpose(), f))));
            tensors.add(new AdapterWriter.Tensor(t.keyA(), t.factorType(), t.shapeA(r), AdapterWriter.bytes(encode(uw.transpose(), f))));
        }
        double written = Math.sqrt(delta.residualSquared(uw, vtw) / delta.deltaSquared());
        double truncation = res.relativeError(r);
        Double optimal = null;
        Double ratio = null;
        if (options.checkOptimal()) {
            DeltaRows rows = new DeltaRows(t.weightName(), t.base(), t.tuned(), m, n); // read again: the check is the CPU's, whatever the engine
            SymmetricEigen eig = SymmetricEigen.of(Gram.of(rows, options.svd().threads()), options.svd().threads());
            double top = 0;
            for (double l : eig.largest(Math.min(r, eig.size()))) {
                top += l;
            }
            optimal = Math.sqrt(Math.max(0, delta.deltaSquared() - top) / delta.deltaSquared());
            ratio = optimal > 0 ? Math.max(truncation, 0) / optimal : null;
        }
        return new ExtractReport.Module(t.module(), t.layout().name().toLowerCase(Locale.ROOT), t.shape(), r, t.factorType().name(),
                res.energyKept(r), written, truncation, optimal, ratio);
    }

    private static void checkFinite(ExtractPlan.Target t, Matrix factor, FloatFormat f) throws ExtractException {
        for (double v : factor.data()) {
            if (!Double.isFinite(v)) {
                throw new ExtractException(ExtractException.Reason.NON_FINITE, "the factors of " + t.module() + " overflow " + f.dtype()
                        + " (ΔW is too large for it); pass --dtype f32 (or bf16); nothing was written");
            }
        }
    }

    private static ByteBuffer encode(Matrix m, FloatFormat f) {
        double[] d = m.data();
        ByteBuffer b = ByteBuffer.allocate(d.length * f.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < d.length; i++) {
            f.putBits(b, i, f.encode(d[i]));
        }
        return b;
    }

    /**
     * Compares every tensor that has no factors; a changed one is saved (modules_to_save, or a
     * targeted layer's bias with bias "lora_only") or reported. Returns whether a lora_only bias was
     * written.
     */
    private static boolean others(ExtractPlan plan, Map<ExtractPlan.Other, Double> compared, Set<String> extracted, ExtractReport report,
                                  List<AdapterWriter.Tensor> tensors,
                                  Set<String> modulesToSave, Progress progress) throws IOException, ExtractException {
        boolean save = plan.options().others() == ExtractOptions.Others.SAVE;
        List<ExtractPlan.Other> changed = new ArrayList<>();
        Map<ExtractPlan.Other, Double> change = new LinkedHashMap<>();
        for (ExtractPlan.Other o : plan.others()) {
            Double rel = compared.get(o);
            if (rel == null || rel != 0) {
                changed.add(o);
                change.put(o, rel);
            } else {
                report.tensorsUnchanged++;
            }
            progress.addBytes(o.base().info().sizeInBytes());
            progress.tensorDone();
        }
        // modules saved whole: every tensor of theirs, the unchanged ones and the targets' weights too
        Set<String> wholeModules = new LinkedHashSet<>();
        boolean loraOnlyBias = false;
        for (ExtractPlan.Other o : changed) {
            long[] bs = o.base().info().shape();
            long[] ts = o.tuned().info().shape();
            if (!save) {
                report.changes.add(new ExtractReport.Change(o.name(), "reported", bs, ts, change.get(o), reason(o)));
                continue;
            }
            if (o.biasOfTarget() && extracted.contains(o.module())) {
                tensors.add(new AdapterWriter.Tensor(o.baseLayerBiasKey(), o.tuned().dtype(), ts, AdapterWriter.copyOf(o.tuned())));
                report.changes.add(new ExtractReport.Change(o.name(), "bias", bs, ts, change.get(o), reason(o)));
                loraOnlyBias = true;
            } else if (extracted.contains(o.module())) {
                report.changes.add(new ExtractReport.Change(o.name(), "reported", bs, ts, change.get(o),
                        "its module " + o.module() + " has low-rank factors, so it cannot also be saved whole"));
                report.warnings.add(o.name() + " changed, but its module has low-rank factors and cannot be saved whole too; it is not in the adapter");
            } else {
                wholeModules.add(o.module());
                report.changes.add(new ExtractReport.Change(o.name(), "modules_to_save", bs, ts, change.get(o), reason(o)));
                if (o.resized()) {
                    report.notes.add(o.name() + " is resized from " + bs[0] + " to " + ts[0] + " rows: PEFT loads the adapter only onto a base "
                            + "whose embeddings were resized to match; loramerge merge takes it as it is (docs/FORMATS.md §1.1)");
                }
            }
        }
        for (String module : wholeModules) {
            modulesToSave.add(module);
            for (ExtractPlan.Other o : plan.others()) {
                if (o.module().equals(module)) {
                    tensors.add(new AdapterWriter.Tensor(o.savedKey(), o.tuned().dtype(), o.tuned().info().shape(), AdapterWriter.copyOf(o.tuned())));
                }
            }
            for (ExtractPlan.Target t : plan.targets()) {
                if (t.module().equals(module)) {
                    tensors.add(new AdapterWriter.Tensor(t.savedWeightKey(), t.tuned().dtype(), t.shape(),
                            AdapterWriter.copyOf(t.tuned())));
                }
            }
        }
        if (!save && !report.changes.isEmpty()) {
            report.warnings.add(report.changes.size() + " changed tensors are not in the adapter (--others report); base + adapter will differ "
                    + "from the tuned model there");
        }
        return loraOnlyBias;
    }

    private static String reason(ExtractPlan.Other o) {
        if (o.resized()) {
            return "resized vocabulary";
        }
        if (!o.base().dtype().isMergeable()) {
            return "not a floating-point tensor";
        }
        if (o.base().info().rank() < 2) {
            return o.name().endsWith(".bias") ? "bias" : "vector (norm or scale)";
        }
        return "not a LoRA target";
    }

    /** ‖T − B‖ / ‖B‖ (+∞ when B is zero), 0 when equal, null when they cannot be compared by value (resized, not floating point). */
    private static Double compare(ExtractPlan.Other o) throws IOException, ExtractException {
        TensorInfo b = o.base().info();
        TensorInfo t = o.tuned().info();
        if (o.resized()) {
            return null;
        }
        if (!b.dtype().isMergeable()) {
            try (TensorSource.Bytes x = o.base().read(0, b.sizeInBytes()); TensorSource.Bytes y = o.tuned().read(0, t.sizeInBytes())) {
                return x.bytes().equals(y.bytes()) ? 0.0 : null;
            }
        }
        int rows = Math.toIntExact(Math.max(1, b.rank() == 0 ? 1 : b.dim(0)));
        int cols = Math.toIntExact(b.numElements() / Math.max(1, rows));
        if (b.numElements() == 0) {
            return 0.0;
        }
        DeltaRows.Scan s = new DeltaRows(o.name(), o.base(), o.tuned(), rows, cols).scan();
        if (s.isZero()) {
            return 0.0;
        }
        return s.baseSquared() == 0 ? Double.POSITIVE_INFINITY : Math.sqrt(s.deltaSquared() / s.baseSquared());
    }
}
