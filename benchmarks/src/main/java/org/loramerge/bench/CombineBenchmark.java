package org.loramerge.bench;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.plan.TermSpec;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;

/**
 * Several adapters on one weight in memory on the CPU engine, all cores, in the pipeline's 8 MiB
 * blocks (docs/FORMATS.md §8): {@code cat} (the exact merge of several terms, beside
 * CpuMergeBenchmark's one term), the TIES merge of the dense deltas once the cut is known
 * ({@code tiesRows}), the magnitude selection's passes that find the cut ({@code selection}: the
 * radix select, every adapter, over the whole weight), and DARE-TIES ({@code dareTiesRows}, no
 * selection). One op covers the whole W; GB/s of W = W bytes / (s/op).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgs = {"-Xmx8g", "-XX:MaxDirectMemorySize=8g"})
public class CombineBenchmark {
    @Param({"4096x4096", "11008x4096"})
    public String shape;

    @Param({"16"})
    public int rank;

    @Param({"4"})
    public int adapters;

    @Param({"BF16"})
    public String dtype;

    private Path dir;
    private SafetensorsFile file;
    private MappedRegion src;
    private ByteBuffer dst;
    private TensorJob cat;
    private TensorJob ties;
    private TensorJob dareTies;
    private CombinedUpdate tiesSpec;
    private int rowsPerBlock;
    private int rowBytes;
    private int rows;
    private int cols;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        int[] s = Synthetic.shape(shape);
        rows = s[0];
        cols = s[1];
        DType d = DType.valueOf(dtype);
        dir = Files.createTempDirectory("lm-bench");
        file = Synthetic.writeAdapters(dir.resolve("w.safetensors"), rows, cols, rank, adapters, d);
        TensorSource w = new TensorSource(file, file.tensor("w"));
        List<Double> weights = new ArrayList<>();
        List<TermSpec> terms = new ArrayList<>();
        for (int i = 0; i < adapters; i++) {
            weights.add(1.0 / adapters);
            terms.add(new TermSpec("m", Layout.LINEAR, new TensorSource(file, file.tensor("a" + i)), new TensorSource(file, file.tensor("b" + i)),
                    rank, 2.0 / adapters));
        }
        cat = TensorJob.prepare(OutputTensor.merge("w", d, w, new OutputTensor.Update(terms, null, null)));
        tiesSpec = spec(CombineMethod.TIES, weights, terms);
        ties = TensorJob.prepare(OutputTensor.merge("w", d, w, new OutputTensor.Update(List.of(), null, null, tiesSpec)));
        selectInParallel(ties.dense());
        dareTies = TensorJob.prepare(OutputTensor.merge("w", d, w, new OutputTensor.Update(List.of(), null, null,
                spec(CombineMethod.DARE_TIES, weights, terms))));
        rowBytes = cols * d.sizeInBytes();
        src = file.map(file.tensor("w"), 0, file.tensor("w").sizeInBytes());
        dst = ByteBuffer.allocateDirect((int) file.tensor("w").sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        int cores = Runtime.getRuntime().availableProcessors();
        rowsPerBlock = Math.max(1, Math.min(Backend.DEFAULT_BLOCK_BYTES / rowBytes, rows / (4 * cores)));
    }

    private CombinedUpdate spec(CombineMethod m, List<Double> weights, List<TermSpec> terms) throws Exception {
        Combination how = Combination.of(m, adapters, weights, 0.5, Combination.MajoritySign.TOTAL, 1.0, 7, 0, null);
        List<CombinedUpdate.Part> parts = new ArrayList<>();
        for (int i = 0; i < adapters; i++) {
            parts.add(new CombinedUpdate.Part(i, terms.get(i), weights.get(i)));
        }
        return new CombinedUpdate(how, "w", "m", parts);
    }

    /** Every selection pass, its row blocks on all cores, as the pipeline runs them. */
    private void selectInParallel(DenseCombination d) {
        int blocks = (rows + rowsPerBlockFor() - 1) / rowsPerBlockFor();
        while (d.needsSelection()) {
            IntStream.range(0, blocks).parallel().forEach(b -> {
                int r0 = b * rowsPerBlockFor();
                d.countRows(r0, Math.min(rowsPerBlockFor(), rows - r0));
            });
            d.finishPass();
        }
    }

    private int rowsPerBlockFor() {
        int cores = Runtime.getRuntime().availableProcessors();
        return Math.max(1, Math.min(Backend.DEFAULT_BLOCK_BYTES / (cols * 2), rows / (4 * cores)));
    }

    private ByteBuffer mergeAll(TensorJob job) {
        int blocks = (rows + rowsPerBlock - 1) / rowsPerBlock;
        BlockStats stats = new BlockStats();
        ByteBuffer all = src.bytes();
        IntStream.range(0, blocks).parallel().forEach(b -> {
            int r0 = b * rowsPerBlock;
            int n = Math.min(rowsPerBlock, rows - r0);
            ByteBuffer in = all.slice(r0 * rowBytes, n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
            ByteBuffer out = dst.slice(r0 * rowBytes, n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
            CpuMerge.mergeRows(job, r0, n, in, out, stats, null);
        });
        return dst;
    }

    @Benchmark
    public ByteBuffer cat() {
        return mergeAll(cat);
    }

    @Benchmark
    public ByteBuffer tiesRows() {
        return mergeAll(ties);
    }

    @Benchmark
    public ByteBuffer dareTiesRows() {
        return mergeAll(dareTies);
    }

    @Benchmark
    public DenseCombination selection() throws Exception {
        DenseCombination d = DenseCombination.load(tiesSpec, rows, cols);
        selectInParallel(d);
        return d;
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        src.close();
        file.close();
        Synthetic.delete(dir);
    }
}
