package org.loramerge.bench;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceFactors;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.engine.cuda.Nf4Kernels;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.DynamicMap;
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
 * The NF4 kernels with everything already on the device (no PCIe), over a whole BF16 weight at
 * blocksize 64: dequantize, requantize (X and W, with the survival sums), the double quantization
 * and survival measure of {@code finish}, and the fused path a {@code merge --to nf4} row block
 * runs (dequantize, DGEMM, merge-and-round, requantize). {@link JmhTable} turns the times
 * into bytes moved through device memory per second and compares them with
 * {@link CudaCopyBenchmark#deviceToDevice} run beside them.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx8g"})
public class CudaNf4Benchmark {
    static final int BLOCKSIZE = 64;

    @Param({"4096x4096", "11008x4096"})
    public String shape;

    @Param({"16"})
    public int rank;

    private CudaDevice device;
    private DeviceWorker worker;
    private DeviceFactors factors;
    private Nf4Kernels k;
    private TensorJob job;
    private Path dir;
    private int rows;
    private int cols;
    private long n;
    private long blocks;
    private final FloatFormat bf16 = FloatFormat.of(DType.BF16);
    private DeviceMemory x;
    private DeviceMemory w;
    private DeviceMemory wide;
    private DeviceMemory packedBase;
    private DeviceMemory absmaxBase;
    private DeviceMemory packedX;
    private DeviceMemory packedW;
    private DeviceMemory absmaxX;
    private DeviceMemory absmaxW;
    private DeviceMemory sums;
    private DeviceMemory map;
    private DeviceMemory buckets;
    private DeviceMemory codes;
    private DeviceMemory nested;
    private DeviceMemory scales;
    private DeviceMemory tiles;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        int[] s = Synthetic.shape(shape);
        rows = s[0];
        cols = s[1];
        n = (long) rows * cols;
        blocks = n / BLOCKSIZE;
        dir = Files.createTempDirectory("lm-bench-nf4");
        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        k = device.nf4();
        try (SafetensorsFile f = Synthetic.write(dir.resolve("w.safetensors"), rows, cols, rank, DType.BF16)) {
            job = TensorJob.prepare(Synthetic.job(f, rank));
            factors = new DeviceFactors(job.terms().get(0), null);
            long bytes = f.tensor("w").sizeInBytes();
            x = new DeviceMemory(bytes);
            w = new DeviceMemory(bytes);
            wide = new DeviceMemory(n * Sizeof.DOUBLE);
            try (MappedRegion r = f.map(f.tensor("w"), 0, bytes)) {
                JCuda.cudaMemcpy(w.pointer(), Pointer.to(r.bytes()), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice);
            }
        }
        packedBase = new DeviceMemory(n / 2);
        absmaxBase = new DeviceMemory(blocks * Sizeof.FLOAT);
        packedX = new DeviceMemory(n / 2);
        packedW = new DeviceMemory(n / 2);
        absmaxX = new DeviceMemory(blocks * Sizeof.FLOAT);
        absmaxW = new DeviceMemory(blocks * Sizeof.FLOAT);
        sums = new DeviceMemory(3 * blocks * Sizeof.DOUBLE);
        map = Nf4Kernels.uploadFloats(null, worker.stream(), DynamicMap.signed());
        buckets = new DeviceMemory(512 * Sizeof.LONG);
        codes = new DeviceMemory(blocks);
        nested = new DeviceMemory((blocks + 255) / 256 * Sizeof.FLOAT);
        scales = new DeviceMemory(blocks * Sizeof.FLOAT);
        tiles = new DeviceMemory(4 * Nf4Kernels.tiles(n) * Sizeof.DOUBLE);
        // the NF4 base: the synthetic weight quantized on the device
        k.quantize(worker.stream(), bf16, w.pointer(), 0, n, BLOCKSIZE, packedBase.pointer(), absmaxBase.pointer());
        // a merged weight to requantize
        worker.mergeRound(factors, bf16, 0, rows, cols, job.boundK(), w.pointer(), wide.pointer(), x.pointer());
        worker.stream().synchronize();
    }

    /*
     * The kernels run REPEAT times back to back per invocation and the time is per run
     * (@OperationsPerInvocation): the device's throughput, without the host's launch-and-wait round
     * trip, which the pipeline hides behind its other streams.
     */
    static final int REPEAT = 10;

    /** Packed codes to BF16: reads n/2 + 4n/64 bytes, writes 2n. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void dequantize() {
        for (int i = 0; i < REPEAT; i++) {
            k.dequant(worker.stream(), bf16, packedBase.pointer(), 0, n, absmaxBase.pointer(), BLOCKSIZE, w.pointer());
        }
        worker.stream().synchronize();
    }

    /** X and W to NF4 with the per-block sums: reads 2n + 2n + 8n, writes n/2 + n/2 + 32n/64 bytes. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void requantize() {
        for (int i = 0; i < REPEAT; i++) {
            k.requant(worker.stream(), bf16, x.pointer(), w.pointer(), wide.pointer(), 0, n, BLOCKSIZE, packedX.pointer(), packedW.pointer(),
                    absmaxX.pointer(), absmaxW.pointer(), sums.pointer());
        }
        worker.stream().synchronize();
    }

    /** What a row block of merge --to nf4 runs on the device: dequantize, DGEMM, merge-and-round, requantize. */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void fusedMergeToNf4() {
        for (int i = 0; i < REPEAT; i++) {
            k.dequant(worker.stream(), bf16, packedBase.pointer(), 0, n, absmaxBase.pointer(), BLOCKSIZE, w.pointer());
            worker.mergeRound(factors, bf16, 0, rows, cols, job.boundK(), w.pointer(), wide.pointer(), x.pointer());
            k.requant(worker.stream(), bf16, x.pointer(), w.pointer(), wide.pointer(), 0, n, BLOCKSIZE, packedX.pointer(), packedW.pointer(),
                    absmaxX.pointer(), absmaxW.pointer(), sums.pointer());
        }
        worker.stream().synchronize();
    }

    /** The end of a weight: exact offset sums, double quantization, decoded scales and the survival measure (for X). */
    @Benchmark
    public void doubleQuantAndMeasure() {
        JCuda.cudaMemsetAsync(buckets.pointer(), 0, 512 * Sizeof.LONG, worker.stream().runtime());
        k.exponentSums(worker.stream(), absmaxX.pointer(), blocks, buckets.pointer());
        long[] b = new long[512];
        worker.stream().synchronize();
        JCuda.cudaMemcpy(Pointer.to(b), buckets.pointer(), 512 * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        float offset = DoubleQuant.offsetOfSums(b, blocks);
        k.doubleQuant(worker.stream(), absmaxX.pointer(), blocks, offset, map.pointer(), codes.pointer(), nested.pointer());
        k.decodeAbsmax(worker.stream(), codes.pointer(), nested.pointer(), map.pointer(), offset, 256, blocks, scales.pointer());
        k.measure(worker.stream(), bf16, packedX.pointer(), packedW.pointer(), scales.pointer(), scales.pointer(), sums.pointer(), n, BLOCKSIZE,
                tiles.pointer());
        worker.stream().synchronize();
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        for (DeviceMemory m : new DeviceMemory[] {x, w, wide, packedBase, absmaxBase, packedX, packedW, absmaxX, absmaxW, sums, map, buckets,
                codes, nested, scales, tiles}) {
            m.close();
        }
        factors.close();
        device.close();
        Files.walk(dir).sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    }
}
