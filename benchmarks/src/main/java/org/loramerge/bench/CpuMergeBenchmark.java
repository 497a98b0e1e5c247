package org.loramerge.bench;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import java.util.stream.IntStream;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
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
 * The CPU engine on one weight in memory, all cores, as the pipeline cuts it into 8 MiB blocks.
 * One op merges the whole W; GB/s of W = W bytes / (s/op) ({@link JmhTable} prints it). Two forks,
 * so that a JIT or page-placement accident of one JVM shows as spread between them; 3 warm-up and 5
 * measured iterations of 2 s each, so that a cold first iteration (the JIT compiling the merge loop)
 * never counts. All 48 parameter sets are 48 x 2 forks x 16 s of iterations, about 26 minutes plus
 * writing their weights; scripts/bench/jmh.sh runs 6 of them by default.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 2)
@Measurement(iterations = 5, time = 2)
@Fork(value = 2, jvmArgs = {"-Xmx8g", "-XX:MaxDirectMemorySize=8g"})
public class CpuMergeBenchmark {
    @Param({"4096x4096", "11008x4096", "4096x11008", "32000x4096"})
    public String shape;

    @Param({"8", "16", "64", "256"})
    public int rank;

    @Param({"BF16", "F16", "F32"})
    public String dtype;

    private Path dir;
    private SafetensorsFile file;
    private MappedRegion src;
    private ByteBuffer dst;
    private TensorJob job;
    private int rowsPerBlock;
    private int rowBytes;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        int[] s = Synthetic.shape(shape);
        DType d = DType.valueOf(dtype);
        dir = Files.createTempDirectory("lm-bench");
        file = Synthetic.write(dir.resolve("w.safetensors"), s[0], s[1], rank, d);
        job = TensorJob.prepare(Synthetic.job(file, rank));
        rowBytes = s[1] * d.sizeInBytes();
        src = file.map(file.tensor("w"), 0, file.tensor("w").sizeInBytes());
        dst = ByteBuffer.allocateDirect((int) file.tensor("w").sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        // at most the pipeline's 8 MiB blocks, and enough of them to keep every core busy on one weight
        int cores = Runtime.getRuntime().availableProcessors();
        rowsPerBlock = Math.max(1, Math.min(Backend.DEFAULT_BLOCK_BYTES / rowBytes, s[0] / (4 * cores)));
    }

    @Benchmark
    public ByteBuffer merge() {
        int rows = (int) job.rows();
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

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        src.close();
        file.close();
        Files.walk(dir).sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    }
}
