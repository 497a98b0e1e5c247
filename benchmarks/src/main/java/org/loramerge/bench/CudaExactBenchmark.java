package org.loramerge.bench;

import java.util.Arrays;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceFactors;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.format.FloatFormat;
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
 * The device kernels that keep merges exact without a cliff, on one BF16 block of a streaming
 * block's size with W already on the device, beside {@link CudaCopyBenchmark#deviceToDevice}:
 * the plain add-and-round ({@code mergeRound}), the same followed by the exact settling of the
 * elements at a rounding boundary ({@code mergeRoundExactly}) with random F32 factors and with F32
 * factors that are bf16 numbers (which put many values exactly on midpoints), and DoRA's row-norm
 * kernel ({@code mergeRoundDora}).
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MICROSECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx4g"})
public class CudaExactBenchmark {
    /** Factors: random F32 values, or F32 values that are bf16 numbers (ties). */
    @Param({"f32", "bf16-values"})
    public String factors;

    private static final int ROWS = 1024;
    private static final int COLS = 4096;
    private static final int RANK = 16;

    private CudaDevice device;
    private DeviceWorker worker;
    private DeviceFactors onDevice;
    private DeviceMemory magnitude;
    private double boundK;
    private final FloatFormat bf16 = FloatFormat.BF16;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        SplittableRandom rnd = new SplittableRandom(5);
        boolean ties = factors.equals("bf16-values");
        double[] u = values(rnd, ROWS * RANK, ties);
        double[] vt = values(rnd, RANK * COLS, ties);
        LowRankTerm term = new LowRankTerm("x", 2.0, RANK, ROWS, COLS, u, vt);
        onDevice = new DeviceFactors(term, null);
        boundK = 4.0 * (RANK + 4) * 0x1p-53; // TensorJob's bound constant for one term of this rank
        short[] w = new short[ROWS * COLS];
        for (int i = 0; i < w.length; i++) {
            w[i] = (short) bf16.encode(bf16.round(0.02 * rnd.nextGaussian()));
        }
        JCuda.cudaMemcpy(worker.input().pointer(), Pointer.to(w), (long) w.length * Sizeof.SHORT, cudaMemcpyKind.cudaMemcpyHostToDevice);
        double[] m = new double[ROWS];
        Arrays.fill(m, 1.0);
        magnitude = new DeviceMemory((long) ROWS * Sizeof.DOUBLE);
        JCuda.cudaMemcpy(magnitude.pointer(), Pointer.to(m), (long) ROWS * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyHostToDevice);
    }

    private double[] values(SplittableRandom rnd, int n, boolean bf16Values) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            double x = (float) (0.02 * rnd.nextGaussian());
            v[i] = bf16Values ? bf16.round(x) : x;
        }
        return v;
    }

    /** DGEMM and the fused add-and-round: the fp64 bound decides, the ambiguous elements only listed. */
    @Benchmark
    public void mergeRound() {
        worker.mergeRound(onDevice, bf16, 0, ROWS, COLS, boundK, worker.input().pointer(), worker.wide().pointer(), worker.output().pointer());
        worker.synchronize();
    }

    /** The same, and the listed elements settled exactly on the device (kernels/exact.cuh). */
    @Benchmark
    public DeviceWorker.Counts mergeRoundExactly() {
        worker.mergeRoundExactly(onDevice, bf16, bf16, 0, ROWS, COLS, boundK);
        return worker.counters();
    }

    /** DGEMM and DoRA's row norms, magnitude scaling and rounding in one kernel. */
    @Benchmark
    public DeviceWorker.Counts mergeRoundDora() {
        worker.mergeRoundDora(onDevice, bf16, bf16, 0, ROWS, COLS, boundK, magnitude);
        return worker.counters();
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        magnitude.close();
        onDevice.close();
        device.close();
    }
}
