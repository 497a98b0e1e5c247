package org.loramerge.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.pipeline.QuantizeRunner;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.quant.ModelQuantizer;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Decoder;
import org.loramerge.quant.Nf4Detector;
import org.loramerge.quant.Nf4Tensor;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The NF4 paths on the CPU, all cores: dequantize one 4096x11008 weight (double-quantized,
 * blocksize 64), requantize it, and the fused file-to-file merge `--to nf4` of a checkpoint of 4
 * such weights with a rank-16 adapter. GB/s of W counts the weight as BF16 (2 bytes an element):
 * 90.2 MB per weight, 360.7 MB for the fused path.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 2, jvmArgs = {"-Xmx4g"})
public class Nf4Benchmark {
    static final int ROWS = 4096;
    static final int COLS = 11008;
    static final int LAYERS = 4;
    static final int RANK = 16;

    private Path dir;
    private Checkpoint nf4;
    private LoraAdapter adapter;
    private MergePlan plan;
    private Nf4Decoder decoder;
    private float[] dense;
    private int run;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        dir = Files.createTempDirectory("lm-nf4");
        Synthetic.writeModel(dir, LAYERS, ROWS, COLS, RANK);
        Path dense16 = dir.resolve("base");
        Path adapterDir = dir.resolve("adapter");
        Path nf4Dir = dir.resolve("nf4");
        try (Checkpoint c = Checkpoint.open(dense16); AtomicOutput o = AtomicOutput.create(nf4Dir, false, List.of(dense16))) {
            QuantizeRunner.run(c, o, new ModelQuantizer.Options(64, true), s -> { });
        }
        nf4 = Checkpoint.open(nf4Dir);
        adapter = LoraAdapter.open(adapterDir);
        plan = Planner.plan(nf4, adapter, new PlanOptions(null, PlanOptions.DEFAULT_MAX_SHARD_SIZE, QuantTarget.NF4));
        Nf4Tensor first = Nf4Detector.detect(nf4).weights().values().iterator().next();
        decoder = first.decoder();
        dense = new float[ROWS * COLS];
        decoder.dequantize(0, dense.length, dense, 0);
    }

    /** Dequantize one weight, in parallel slices of whole blocks. */
    @Benchmark
    public float[] dequantize() {
        int slices = 4 * Runtime.getRuntime().availableProcessors();
        int per = (dense.length / slices + 63) / 64 * 64;
        IntStream.range(0, slices).parallel().forEach(k -> {
            int first = k * per;
            int n = Math.max(0, Math.min(per, dense.length - first));
            try {
                decoder.dequantize(first, n, dense, first);
            } catch (IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
        });
        return dense;
    }

    /** Quantize one weight's values to codes and absmax (no double quantization), in parallel blocks. */
    @Benchmark
    public byte[] requantize() {
        byte[] codes = new byte[dense.length];
        int blocks = dense.length / 64;
        IntStream.range(0, blocks).parallel().forEach(b -> Nf4Codec.quantizeBlock(dense, b * 64, 64, codes, b * 64));
        return codes;
    }

    /** Dequantize, merge exactly and requantize 4 weights, file to file with fsync (`merge --to nf4`). */
    @Benchmark
    public Object fusedMergeToNf4() throws Exception {
        Path out = dir.resolve("out-" + run++);
        try (CpuBackend cpu = new CpuBackend(Runtime.getRuntime().availableProcessors());
             AtomicOutput o = AtomicOutput.create(out, false, List.of(dir.resolve("nf4"), dir.resolve("adapter")))) {
            return MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
        } finally {
            Synthetic.delete(out);
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        nf4.close();
        adapter.close();
        Synthetic.delete(dir);
    }
}
