package org.loramerge.bench;

import java.util.concurrent.TimeUnit;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.engine.cuda.PinnedMemory;
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

/** The two ceilings the GPU merge is measured against: device-to-device and pinned host-to-device copies. */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx2g"})
public class CudaCopyBenchmark {
    /** Bytes copied: a 4096x11008 BF16 weight, and a 32000x4096 one. */
    @Param({"90177536", "262144000"})
    public long bytes;

    private CudaDevice device;
    private DeviceWorker worker;
    private DeviceMemory a;
    private DeviceMemory b;
    private PinnedMemory host;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        a = new DeviceMemory(bytes);
        b = new DeviceMemory(bytes);
        host = new PinnedMemory(bytes);
        JCuda.cudaMemset(a.pointer(), 0x3c, bytes);
        java.nio.ByteBuffer h = host.buffer();
        for (int i = 0; i < h.capacity(); i += 4096) {
            h.put(i, (byte) i);
        }
    }

    /** Reads and writes {@code bytes}: count 2x bytes of traffic when comparing with memory bandwidth. */
    @Benchmark
    public void deviceToDevice() {
        JCuda.cudaMemcpyAsync(b.pointer(), a.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToDevice, worker.stream().runtime());
        worker.stream().synchronize();
    }

    @Benchmark
    public void pinnedHostToDevice() {
        JCuda.cudaMemcpyAsync(a.pointer(), host.pointer(), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice, worker.stream().runtime());
        worker.stream().synchronize();
    }

    @TearDown(Level.Trial)
    public void tearDown() {
        a.close();
        b.close();
        host.close();
        device.close();
    }
}
