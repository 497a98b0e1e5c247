package org.loramerge.bench;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Backends;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The whole pipeline, file to file: a 1.44 GB BF16 checkpoint of 16 weights of 4096x11008, each with
 * a rank-16 LoRA pair, merged with fsync as `loramerge merge` does. GB/s = 1.442 / (s/op).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 1)
@Measurement(iterations = 3)
@Fork(value = 1, jvmArgs = {"-Xmx2g"})
public class PipelineBenchmark {
    static final int LAYERS = 16;
    static final int ROWS = 4096;
    static final int COLS = 11008;
    static final int RANK = 16;

    @Param({"cpu", "cuda"})
    public String device;

    private Path dir;
    private Backend backend;
    private Checkpoint base;
    private LoraAdapter adapter;
    private MergePlan plan;
    private int run;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        dir = Files.createTempDirectory("lm-pipeline");
        Path baseDir = Files.createDirectories(dir.resolve("base"));
        Path adapterDir = Files.createDirectories(dir.resolve("adapter"));
        SplittableRandom rnd = new SplittableRandom(7);
        List<SafetensorsWriter.Entry> weights = new ArrayList<>();
        List<SafetensorsWriter.Entry> factors = new ArrayList<>();
        for (int i = 0; i < LAYERS; i++) {
            String m = "model.layers." + i + ".mlp.up_proj";
            weights.add(new SafetensorsWriter.Entry(m + ".weight", DType.BF16, new long[] {ROWS, COLS}));
            factors.add(new SafetensorsWriter.Entry("base_model.model." + m + ".lora_A.weight", DType.F32, new long[] {RANK, COLS}));
            factors.add(new SafetensorsWriter.Entry("base_model.model." + m + ".lora_B.weight", DType.F32, new long[] {ROWS, RANK}));
        }
        write(baseDir.resolve("model.safetensors"), weights, rnd);
        write(adapterDir.resolve("adapter_model.safetensors"), factors, rnd);
        Files.writeString(baseDir.resolve("config.json"), "{\"model_type\":\"llama\",\"tie_word_embeddings\":false}");
        Files.writeString(adapterDir.resolve("adapter_config.json"),
                "{\"peft_type\":\"LORA\",\"r\":" + RANK + ",\"lora_alpha\":32,\"target_modules\":[\"up_proj\"]}");
        base = Checkpoint.open(baseDir);
        adapter = LoraAdapter.open(adapterDir);
        plan = Planner.plan(base, adapter, PlanOptions.defaults());
        backend = Backends.open(device, Runtime.getRuntime().availableProcessors()).backend();
    }

    private static void write(Path file, List<SafetensorsWriter.Entry> entries, SplittableRandom rnd) throws IOException {
        try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of("format", "pt"))) {
            ByteBuffer b = ByteBuffer.allocate(1 << 22).order(ByteOrder.LITTLE_ENDIAN);
            for (SafetensorsWriter.Entry e : entries) {
                long n = e.sizeInBytes();
                for (long i = 0; i < n; i += 2) {
                    b.putShort((short) (e.dtype() == DType.BF16 ? 0x3c00 | rnd.nextInt(0x3ff) : rnd.nextInt(0x3ff) | 0x3c00));
                    if (!b.hasRemaining()) {
                        b.flip();
                        w.write(b);
                        b.clear();
                    }
                }
                b.flip();
                w.write(b);
                b.clear();
            }
            w.finish();
        }
    }

    @Benchmark
    public Object mergeFileToFile() throws Exception {
        Path out = dir.resolve("out-" + run++);
        try (AtomicOutput o = AtomicOutput.create(out, false, List.of(dir.resolve("base"), dir.resolve("adapter")))) {
            return MergeRunner.run(plan, backend, o, MergeRunner.Options.defaults(), Progress.silent());
        } finally {
            delete(out);
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        backend.close();
        base.close();
        adapter.close();
        delete(dir);
    }

    private static void delete(Path p) throws IOException {
        if (Files.exists(p)) {
            try (Stream<Path> s = Files.walk(p)) {
                s.sorted(Comparator.reverseOrder()).forEach(x -> x.toFile().delete());
            }
        }
    }
}
