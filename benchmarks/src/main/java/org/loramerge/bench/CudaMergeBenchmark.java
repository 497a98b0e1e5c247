package org.loramerge.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import jcuda.Pointer;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceFactors;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
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
 * The GPU merge with W already on the device (no PCIe): P = s·U·Vᵀ by DGEMM into fp64, then the
 * fused add-and-round kernel, as the engine runs them for a block (DeviceWorker#mergeRound), here
 * for the whole weight at once. Compare with
 * {@link CudaCopyBenchmark}: a device-to-device copy of the same bytes, and the pinned
 * host-to-device copy that feeds the pipeline.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx8g"})
public class CudaMergeBenchmark {
    @Param({"4096x4096", "11008x4096", "4096x11008", "32000x4096"})
    public String shape;

    @Param({"8", "16", "64", "256"})
    public int rank;

    @Param({"BF16", "F16", "F32"})
    public String dtype;

    private CudaDevice device;
    private DeviceWorker worker;
    private DeviceFactors factors;
    private DeviceMemory in;
    private DeviceMemory wide;
    private DeviceMemory out;
    private TensorJob job;
    private Path dir;
    private int rows;
    private int cols;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        int[] s = Synthetic.shape(shape);
        rows = s[0];
        cols = s[1];
        DType d = DType.valueOf(dtype);
        dir = Files.createTempDirectory("lm-bench");
        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        try (SafetensorsFile f = Synthetic.write(dir.resolve("w.safetensors"), rows, cols, rank, d)) {
            job = TensorJob.prepare(Synthetic.job(f, rank));
            LowRankTerm t = job.terms().get(0);
            factors = new DeviceFactors(t, null);
            long bytes = f.tensor("w").sizeInBytes();
            in = new DeviceMemory(bytes);
            out = new DeviceMemory(bytes);
            wide = new DeviceMemory((long) rows * cols * 8);
            try (MappedRegion r = f.map(f.tensor("w"), 0, bytes)) {
                JCuda.cudaMemcpy(in.pointer(), Pointer.to(r.bytes()), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice);
            }
        }
    }

    /** The DGEMM alone, to see which part bounds the merge. */
    @Benchmark
    public void productOnly() {
        worker.product(factors, 0, rows, cols, wide.pointer());
        worker.stream().synchronize();
    }

    /** The fused add-and-round kernel alone. */
    @Benchmark
    public void addAndRoundOnly() {
        worker.addAndRound(factors, FloatFormat.of(DType.valueOf(dtype)), 0, rows, cols, job.boundK(),
                in.pointer(), wide.pointer(), out.pointer());
        worker.stream().synchronize();
    }

    @Benchmark
    public void mergeOnDevice() {
        worker.mergeRound(factors, FloatFormat.of(DType.valueOf(dtype)), 0, rows, cols, job.boundK(),
                in.pointer(), wide.pointer(), out.pointer());
        worker.stream().synchronize();
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        in.close();
        out.close();
        wide.close();
        factors.close();
        device.close();
        Files.walk(dir).sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    }
}
