package org.loramerge.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceCombination;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.TensorSource;
import org.loramerge.plan.TermSpec;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The GPU engine's dense combination kernels (kernels/combine.cu, driven by {@link DeviceCombination})
 * for four rank-16 adapters on one BF16 weight (random factors, weights 0.4, 0.3, 0.2, 0.1, density
 * 0.5), the adapters' factors already on the device, beside {@link CudaCopyBenchmark#deviceToDevice}:
 * <ul>
 *   <li>{@link #selectionPass}: one pass of the top-D selection by magnitude of ties and
 *       magnitude_prune ({@code combine_histogram} of every adapter over the whole weight, the first
 *       pass's 16 bits of the key), the device alone;</li>
 *   <li>{@link #selection}: the whole selection as {@code combine}'s SVD path runs it on a weight
 *       ({@link DeviceCombination#countSelection} over the whole weight, each pass's histograms read
 *       back and the cut narrowed on the host, until every adapter's cut is known; a merge counts
 *       the same passes block by block);</li>
 *   <li>{@link #tiesRound}: TIES once the cuts are known, the trim, sign election, disjoint mean,
 *       W + Δ and its rounding to BF16 in one kernel ({@code combine_round_bf16}), over the whole weight
 *       in the engine's row blocks (a worker's block of {@link Backend#DEFAULT_BLOCK_BYTES} of output),
 *       W already on the device (one block of random BF16 values in the worker's input, read by
 *       every block: the upload the engine does per block is not timed);</li>
 *   <li>{@link #dareTiesRound}: the same for dare_ties, whose random masks (DARE's keyed hash of each
 *       element) the kernel draws inline: there is no separate mask kernel;</li>
 *   <li>{@link #tiesDelta}: Δ of TIES alone into a float64 matrix of the whole weight
 *       ({@code combine_delta}), as {@code combine --combine ties_svd} forms it before the SVD.</li>
 * </ul>
 * The kernels of the device-only methods run {@link #REPEAT} times back to back per invocation
 * with one synchronize, the time being per run ({@code @OperationsPerInvocation}): the device's
 * figure, without the host's launch-and-wait round trip. The elements combine_round lists as
 * ambiguous (settled on the host by the engine) are not settled here. {@link JmhTable} counts the
 * bytes of W per op: the whole weight as BF16 ({@code shape} x 2 bytes) for every method, whatever
 * the kernel reads (the factors, W for the rounding kernels) or writes (nothing but the histograms
 * for the selection, BF16 for the rounding, eight bytes an element for combine_delta); its
 * "x D2D copy" is that figure over the copy's bytes per second.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx8g"})
public class CudaCombineBenchmark {
    static final int REPEAT = 10;
    static final int ADAPTERS = 4;
    static final double[] WEIGHTS = {0.4, 0.3, 0.2, 0.1};
    static final double DENSITY = 0.5;

    @Param({"11008x4096", "4096x4096"})
    public String shape;

    @Param({"16"})
    public int rank;

    private final FloatFormat bf16 = FloatFormat.BF16;
    private Path dir;
    private SafetensorsFile file;
    private int rows;
    private int cols;
    private int blockRows;
    private CombinedUpdate tiesSpec;
    private CudaDevice device;
    private DeviceWorker worker;
    /** TIES with every cut known and uploaded. */
    private DeviceCombination ties;
    /** dare_ties: no selection. */
    private DeviceCombination dareTies;
    /** TIES with its selection still open, for {@link #selectionPass}. */
    private DeviceCombination open;
    /** Δ of the whole weight, fp64. */
    private DeviceMemory delta;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        try {
            prepare();
        } catch (Exception | Error e) {
            // JMH runs no tear-down after a failed set-up: give back what was taken (the device, the temporary files) here
            try {
                tearDown();
            } catch (Exception | Error x) {
                e.addSuppressed(x);
            }
            throw e;
        }
    }

    private void prepare() throws Exception {
        int[] s = Synthetic.shape(shape);
        rows = s[0];
        cols = s[1];
        dir = Files.createTempDirectory("lm-bench-combine-gpu");
        file = Synthetic.writeAdapters(dir.resolve("w.safetensors"), rows, cols, rank, ADAPTERS, DType.BF16);
        List<TermSpec> terms = new ArrayList<>();
        for (int i = 0; i < ADAPTERS; i++) {
            terms.add(new TermSpec("m", Layout.LINEAR, new TensorSource(file, file.tensor("a" + i)), new TensorSource(file, file.tensor("b" + i)),
                    rank, 2.0 / ADAPTERS));
        }
        tiesSpec = spec(CombineMethod.TIES, terms);
        CombinedUpdate dareSpec = spec(CombineMethod.DARE_TIES, terms);
        DenseCombination tiesDense = DenseCombination.load(tiesSpec, rows, cols);
        DenseCombination dareDense = DenseCombination.load(dareSpec, rows, cols);
        DenseCombination openDense = DenseCombination.load(tiesSpec, rows, cols);

        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        // the engine's row block for BF16 in and out: a worker's block of output
        blockRows = Math.max(1, Math.min(rows, device.blockBytes() / (cols * bf16.sizeInBytes())));
        ties = new DeviceCombination(device, tiesDense, cols);
        select(ties, tiesDense);
        if (ties.partialTies()) {
            throw new IllegalStateException(shape + ": the random factors gave a cut inside a run of equal magnitudes; "
                    + "the engine would merge this weight on the CPU, so there is nothing of the device to time");
        }
        ties.uploadCuts();
        dareTies = new DeviceCombination(device, dareDense, cols);
        dareTies.uploadCuts();
        open = new DeviceCombination(device, openDense, cols);
        if (!openDense.needsSelection()) {
            throw new IllegalStateException("TIES at density " + DENSITY + " has no selection to time");
        }
        delta = new DeviceMemory((long) rows * cols * Sizeof.DOUBLE);
        // W: one random BF16 block in the worker's input, as the pipeline uploads each block
        short[] w = new short[blockRows * cols];
        SplittableRandom rnd = new SplittableRandom(rows * 31L + cols);
        for (int i = 0; i < w.length; i++) {
            w[i] = (short) bf16.encode(bf16.round(0.02 * rnd.nextGaussian()));
        }
        JCuda.cudaMemcpy(worker.input().pointer(), Pointer.to(w), (long) w.length * Sizeof.SHORT, cudaMemcpyKind.cudaMemcpyHostToDevice);
        // a copy from pageable memory may return before its DMA lands, and the worker's stream does not wait for the legacy stream
        JCuda.cudaDeviceSynchronize();
    }

    private static CombinedUpdate spec(CombineMethod m, List<TermSpec> terms) throws Exception {
        List<Double> weights = new ArrayList<>();
        for (double x : WEIGHTS) {
            weights.add(x);
        }
        Combination how = Combination.of(m, ADAPTERS, weights, DENSITY, Combination.MajoritySign.TOTAL, 1.0, 7, 0, null);
        List<CombinedUpdate.Part> parts = new ArrayList<>();
        for (int i = 0; i < ADAPTERS; i++) {
            parts.add(new CombinedUpdate.Part(i, terms.get(i), WEIGHTS[i]));
        }
        return new CombinedUpdate(how, "w", "m", parts);
    }

    /** Every selection pass over the whole weight, as {@code combine}'s SVD path runs them (CudaWeightDelta.ofCombination). */
    private void select(DeviceCombination c, DenseCombination d) {
        while (d.needsSelection()) {
            c.countSelection(0, rows);
            c.finishSelectionPass();
            d.finishPass();
        }
    }

    /** The first selection pass's histograms of the four adapters over the whole weight. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void selectionPass() {
        for (int i = 0; i < REPEAT; i++) {
            open.queueHistograms(worker, 0, rows);
        }
        worker.synchronize();
    }

    /** A fresh TIES combination for each invocation of {@link #selection}, its selection open (uploaded outside the timing). */
    @State(Scope.Thread)
    public static class FreshSelection {
        DenseCombination dense;
        DeviceCombination onDevice;

        @Setup(Level.Invocation)
        public void open(CudaCombineBenchmark b) throws Exception {
            dense = DenseCombination.load(b.tiesSpec, b.rows, b.cols);
            onDevice = new DeviceCombination(b.device, dense, b.cols);
        }

        @TearDown(Level.Invocation)
        public void close() {
            if (onDevice != null) {
                onDevice.close();
                onDevice = null;
            }
        }
    }

    /** The whole top-D selection of the four adapters: every pass, the counts read back after each. */
    @Benchmark
    public DenseCombination selection(FreshSelection f) {
        select(f.onDevice, f.dense);
        return f.dense;
    }

    /** TIES of the whole weight in the engine's row blocks: trim, sign election, disjoint mean, W + Δ rounded to BF16. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void tiesRound() {
        roundAll(ties);
    }

    /** dare_ties of the whole weight in the engine's row blocks: the masks drawn inline, sign election, W + Δ rounded to BF16. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void dareTiesRound() {
        roundAll(dareTies);
    }

    private void roundAll(DeviceCombination c) {
        for (int i = 0; i < REPEAT; i++) {
            for (int r0 = 0; r0 < rows; r0 += blockRows) {
                c.queueRound(worker, bf16, r0, Math.min(blockRows, rows - r0));
            }
        }
        worker.synchronize();
    }

    /** Δ of TIES for the whole weight in float64 (combine_delta), as ties_svd forms it on the device before its SVD. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void tiesDelta() {
        for (int i = 0; i < REPEAT; i++) {
            ties.queueDelta(worker, 0, rows, delta);
        }
        worker.synchronize();
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        // the benchmark threads' work is done; the combinations' buffers go back to the pool before the device closes it
        if (device != null) {
            device.synchronizeAll();
            for (AutoCloseable c : new AutoCloseable[] {ties, dareTies, open, delta}) {
                if (c != null) {
                    c.close();
                }
            }
            ties = dareTies = open = null;
            delta = null;
            CudaDevice d = device;
            device = null;
            d.close();
        }
        if (file != null) {
            SafetensorsFile f = file;
            file = null;
            f.close();
        }
        if (dir != null) {
            Path d = dir;
            dir = null;
            Synthetic.delete(d);
        }
    }
}
