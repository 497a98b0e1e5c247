package org.loramerge.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.select.Backends;
import org.loramerge.format.Checkpoint;
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
 * a rank-16 LoRA pair, merged with fsync as `loramerge merge` does. GB/s = 1.442 / (s/op). The CPU
 * engine by default; on a GPU machine add {@code -p device=cpu,cuda} (scripts/device/gpu-run.sh does).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.SingleShotTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 2)
@Measurement(iterations = 5)
@Fork(value = 2, jvmArgs = {"-Xmx2g"})
public class PipelineBenchmark {
    @Param({"cpu"})
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
        Synthetic.writeModel(dir, 16, 4096, 11008, 16);
        base = Checkpoint.open(dir.resolve("base"));
        adapter = LoraAdapter.open(dir.resolve("adapter"));
        plan = Planner.plan(base, adapter, PlanOptions.defaults());
        backend = Backends.open(device, Runtime.getRuntime().availableProcessors()).backend();
    }

    @Benchmark
    public Object mergeFileToFile() throws Exception {
        Path out = dir.resolve("out-" + run++);
        try (AtomicOutput o = AtomicOutput.create(out, false, List.of(dir.resolve("base"), dir.resolve("adapter")))) {
            return MergeRunner.run(plan, backend, o, MergeRunner.Options.defaults(), Progress.silent());
        } finally {
            Synthetic.delete(out);
        }
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        backend.close();
        base.close();
        adapter.close();
        Synthetic.delete(dir);
    }
}
