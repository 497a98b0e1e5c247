package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasOperation;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaDeviceProp;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Backends.DeviceUnavailableException;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.plan.Layout;

/**
 * The GPU engine. Each pipeline worker thread owns a stream, a cuBLAS handle, pinned staging
 * buffers and device buffers; while one worker's block is in its host-to-device copy, another's
 * is computing and a third's is coming back, so disk, PCIe and GPU overlap. Per block:
 * P = s·U·Vᵀ (cuBLAS DGEMM), then v = W + P in fp64 rounded once to the output dtype with the
 * fp64 error bound (one fused PTX pass; see {@link #computeOnDevice}), and copy back. The few elements whose bound straddles a
 * rounding boundary come back as a list and are recomputed exactly on the host with the CPU
 * engine's code, so the output is bit for bit the CPU engine's.
 *
 * <p>Tensors the GPU path does not cover (DoRA, token rows, bias terms, several terms, a dtype
 * conversion) are merged by the CPU engine inside this backend; they are small or rare.
 */
public final class CudaBackend implements Backend {
    /** Oldest architecture the PTX targets: compute_80, for bf16 and fp64 throughput (kernels/README.md). */
    static final int MIN_MAJOR = 8;
    static final int AMBIGUOUS_CAPACITY = 1 << 16;
    /** Pipeline threads (and streams) at most: each also copies blocks on the host, so more help until PCIe is full. */
    private static final int MAX_STREAMS = 8;

    private final int ordinal;
    private final String description;
    private final CUcontext context = new CUcontext();
    private final List<PtxModule> modules = new ArrayList<>();
    private final Map<String, CUfunction> functions = new ConcurrentHashMap<>();
    private final Map<TensorJob, Factors> factors = new ConcurrentHashMap<>();
    private final List<Worker> workers = new ArrayList<>();
    private final List<PinnedMemory> blockBuffers = new ArrayList<>();
    private final ThreadLocal<Worker> worker = new ThreadLocal<>();
    private final int blockBytes;
    private final int streams;
    private final List<CudaRequantization> requantizations = new ArrayList<>();
    private final DevicePool pool = new DevicePool();
    private Nf4Kernels nf4;
    private boolean closed;

    private CudaBackend(int ordinal, String description, int blockBytes, int streams) {
        this.ordinal = ordinal;
        this.description = description;
        this.blockBytes = blockBytes;
        this.streams = streams;
    }

    /** Opens device {@code ordinal}; explains precisely why when it cannot. Called by Backends. */
    public static Backend open(int ordinal, int cpuThreads) throws DeviceUnavailableException {
        if (!System.getProperty("os.name", "").toLowerCase(java.util.Locale.ROOT).contains("linux")
                || !System.getProperty("os.arch", "").matches("amd64|x86_64")) {
            throw new DeviceUnavailableException("the GPU engine runs on Linux x86-64 only", null);
        }
        if (CublasLoader.find(CublasLoader.searchDirs(), "libcuda.so.1") == null && CublasLoader.find(
                java.util.List.of(java.nio.file.Paths.get("/usr/local/nvidia/lib64"), java.nio.file.Paths.get("/usr/lib64")), "libcuda.so.1") == null) {
            throw new DeviceUnavailableException("no NVIDIA driver: libcuda.so.1 not found", null);
        }
        try {
            JCuda.setExceptionsEnabled(true);
            JCudaDriver.setExceptionsEnabled(true);
        } catch (UnsatisfiedLinkError | NoClassDefFoundError e) {
            String first = String.valueOf(e.getMessage()).split("\n")[0];
            throw new DeviceUnavailableException("JCuda's native libraries could not be loaded (" + first
                    + "); the GPU engine needs an NVIDIA driver", e);
        }
        int[] count = {0};
        try {
            JCudaDriver.cuInit(0);
            JCuda.cudaGetDeviceCount(count);
        } catch (Throwable e) {
            throw new DeviceUnavailableException("no usable NVIDIA driver or device (" + String.valueOf(e.getMessage()).split("\n")[0] + ")", e);
        }
        if (ordinal < 0 || ordinal >= count[0]) {
            throw new DeviceUnavailableException("CUDA device " + ordinal + " does not exist; this machine has " + count[0], null);
        }
        cudaDeviceProp prop = new cudaDeviceProp();
        JCuda.cudaGetDeviceProperties(prop, ordinal);
        String name = prop.getName();
        if (prop.major < MIN_MAJOR) {
            throw new DeviceUnavailableException(name + " has compute capability " + prop.major + "." + prop.minor
                    + "; loramerge's kernels need 8.0 (Ampere) or newer. Use --device cpu", null);
        }
        JCuda.cudaSetDevice(ordinal);
        long[] free = {0};
        long[] total = {0};
        JCuda.cudaMemGetInfo(free, total);
        int streams = Math.max(2, Math.min(MAX_STREAMS, cpuThreads / 2));
        long needed = (long) streams * 6 * MergeRunner.DEFAULT_BLOCK_BYTES + (256L << 20);
        if (free[0] < needed) {
            throw new DeviceUnavailableException(name + " has " + (free[0] >> 20) + " MiB free; the GPU engine needs about "
                    + (needed >> 20) + " MiB. Free the device or use --device cpu", null);
        }
        String cublas;
        try {
            // before the first use of JCublas2: its static initializer links libcublas.so.12 once and for all
            cublas = CublasLoader.ensureLoaded();
            JCublas2.setExceptionsEnabled(true);
        } catch (java.io.IOException | UnsatisfiedLinkError | NoClassDefFoundError e) {
            throw new DeviceUnavailableException("cuBLAS could not be loaded: " + e.getMessage(), e);
        }
        CudaBackend b = new CudaBackend(ordinal, "cuda:" + ordinal + " " + name + " (sm_" + prop.major + prop.minor + ", " + cublas + ")",
                MergeRunner.DEFAULT_BLOCK_BYTES, streams);
        try {
            CUdevice dev = new CUdevice();
            JCudaDriver.cuDeviceGet(dev, ordinal);
            JCudaDriver.cuDevicePrimaryCtxRetain(b.context, dev);
            JCudaDriver.cuCtxSetCurrent(b.context);
            PtxModule round = new PtxModule("round.ptx");
            b.modules.add(round);
            for (String f : new String[] {"merge_round_bf16", "merge_round_f16", "merge_round_f32"}) {
                b.functions.put(f, round.function(f));
            }
            PtxModule nf4 = new PtxModule("nf4.ptx");
            b.modules.add(nf4);
            b.nf4 = new Nf4Kernels(nf4);
        } catch (Throwable e) {
            b.close();
            throw new DeviceUnavailableException("the GPU kernels could not be loaded on " + name + ": " + e.getMessage(), e);
        }
        return b;
    }

    @Override
    public String describe() {
        return description;
    }

    @Override
    public int parallelism() {
        return streams;
    }

    @Override
    public ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        bindContext();
        PinnedMemory m = new PinnedMemory(sizeInBytes);
        synchronized (blockBuffers) {
            blockBuffers.add(m);
        }
        return m.buffer();
    }

    /**
     * Whether the GPU path computes this tensor (else the CPU engine does, inside this backend):
     * one low-rank term, no DoRA, token rows or dtype conversion. An NF4 source is dequantized on
     * the device ({@link #readsPacked}) and an NF4 output requantized there ({@link #requantize}).
     */
    static boolean onGpu(TensorJob job) {
        if (job.srcFormat() == null || job.srcFormat() != job.dstFormat() || job.doraAxis() != null || job.tokenValues() != null) {
            return false;
        }
        // a tensor without terms and with its own dtype is a byte copy and never reaches a backend
        return job.terms().size() == 1 && job.out().terms().get(0).layout() != Layout.BIAS;
    }

    @Override
    public boolean readsPacked(TensorJob job) {
        return onGpu(job) && job.out().source().isQuantized() && !job.out().isRequantized();
    }

    @Override
    public Requantization requantize(TensorJob job) {
        if (!onGpu(job) || !job.out().isRequantized()) {
            return null;
        }
        bindContext();
        CudaRequantization r = new CudaRequantization(this, job, factors.get(job));
        synchronized (requantizations) {
            requantizations.add(r);
        }
        return r;
    }

    void forget(CudaRequantization r) {
        synchronized (requantizations) {
            requantizations.remove(r);
        }
    }

    Nf4Kernels nf4() {
        return nf4;
    }

    DevicePool pool() {
        return pool;
    }

    @Override
    public void beginTensor(TensorJob job) throws java.io.IOException {
        if (!onGpu(job)) {
            return;
        }
        bindContext();
        LowRankTerm t = job.terms().get(0);
        Factors f = new Factors(t, pool);
        if (job.out().source().isQuantized()) {
            try (CudaStream s = new CudaStream()) {
                f.sourceAbsmax = nf4.decodedAbsmax(pool, s, job.out().source().nf4());
            } catch (RuntimeException | java.io.IOException e) {
                f.close();
                throw e;
            }
        }
        factors.put(job, f);
    }

    @Override
    public void endTensor(TensorJob job) {
        Factors f = factors.remove(job);
        if (f != null) {
            bindContext();
            f.close();
        }
    }

    @Override
    public void mergeRows(TensorJob job, long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        if (!onGpu(job) || stats.deltas() != null) {
            // the CPU engine's tensors, and merges that must record each element's ΔW (the CPU requantization's)
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats);
            return;
        }
        Worker w = worker();
        FloatFormat fmt = job.dstFormat();
        int cols = job.cols();
        long n = (long) rowCount * cols;
        long bytes = n * fmt.sizeInBytes();
        Factors f = factors.get(job);
        loadW(w, job, f, row0, rowCount, src);
        computeOnDevice(w, f, fmt, row0, rowCount, cols, job.boundK(), w.dIn.pointer(), w.dWide.pointer(), w.dOut.pointer());
        // dst is page-locked when the pipeline took it from allocateBlockBuffer, so this copy is asynchronous and direct
        JCuda.cudaMemcpyAsync(Pointer.to(dst), w.dOut.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost, w.stream.runtime());
        long[] counted = counters(w);
        long ambiguous = counted[0];
        long overflows = counted[1];
        long nans = counted[2];
        if (job.out().source().isQuantized() && ambiguous > 0) {
            src = downloadW(w, bytes); // the host work below reads W: the dequantized values, not the packed codes
        }
        if (ambiguous > AMBIGUOUS_CAPACITY) {
            // pathological input: let the CPU engine decide the whole block
            src.position(0);
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats);
            return;
        }
        dst.position(0);
        if (ambiguous > 0) {
            JCuda.cudaMemcpy(w.hostAmbiguous.pointer(), w.ambiguous.pointer(), ambiguous * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            ByteBuffer out = dst;
            overflows += settle(job, row0, src, w.hostAmbiguous.buffer(), (int) ambiguous, (e, bits) -> fmt.putBits(out, e, bits));
        }
        stats.add(ambiguous, overflows, nans);
    }

    /**
     * The merge_round kernel's counters of the worker's last block, once the stream has done
     * everything queued: {ambiguous, overflows, NaNs}.
     */
    static long[] counters(Worker w) {
        JCuda.cudaMemcpyAsync(w.hostCounters.pointer(), w.counters.pointer(), 3 * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost,
                w.stream.runtime());
        w.stream.synchronize();
        ByteBuffer c = w.hostCounters.buffer();
        return new long[] {c.getLong(0), c.getLong(8), c.getLong(16)};
    }

    /** Where {@link #settle} puts an element's bits: {@code element} indexes the block. */
    interface SettledSink {
        void put(long element, int bits);
    }

    /**
     * Decides the block's {@code count} ambiguous elements, listed (in no order) in {@code idx}:
     * each is computed exactly on the host from W ({@code src}, the block in the source format)
     * and rounded once, then handed to {@code sink}. Returns how many overflowed to ±Inf.
     */
    static long settle(TensorJob job, long row0, ByteBuffer src, ByteBuffer idx, int count, SettledSink sink) {
        int cols = job.cols();
        FloatFormat srcFmt = job.srcFormat();
        FloatFormat fmt = job.dstFormat();
        long[] elements = new long[count];
        for (int a = 0; a < count; a++) {
            elements[a] = idx.getLong(a * 8);
        }
        Arrays.sort(elements); // sorted, each row is decoded once
        double[] row = new double[cols];
        int rowDecoded = -1;
        long overflows = 0;
        for (long e : elements) {
            int i = (int) (e / cols);
            int j = (int) (e % cols);
            if (i != rowDecoded) {
                for (int c = 0; c < cols; c++) {
                    row[c] = srcFmt.decode(srcFmt.bitsAt(src, (long) i * cols + c));
                }
                rowDecoded = i;
            }
            double y = ExactMath.round(ExactMath.merged(job, row, row0 + i, j), fmt);
            if (Double.isInfinite(y)) {
                overflows++;
            }
            sink.put(e, fmt.encode(y));
        }
        return overflows;
    }

    /**
     * Queues W of rows [row0, row0 + rowCount) into the worker's dIn: {@code src} copied up as it
     * is, or for an NF4 source its packed codes copied up and dequantized on the device.
     */
    void loadW(Worker w, TensorJob job, Factors f, long row0, int rowCount, ByteBuffer src) {
        int cols = job.cols();
        long n = (long) rowCount * cols;
        ByteBuffer in = w.hostIn.buffer();
        if (job.out().source().isQuantized()) {
            long first = row0 * cols;
            long packedBytes = (first + n - 1) / 2 - first / 2 + 1;
            src.position(0).limit((int) packedBytes);
            in.put(src);
            JCuda.cudaMemcpyAsync(w.dPacked.pointer(), w.hostIn.pointer(), packedBytes, cudaMemcpyKind.cudaMemcpyHostToDevice,
                    w.stream.runtime());
            nf4.dequant(w.stream, job.srcFormat(), w.dPacked.pointer(), first, n, f.sourceAbsmax.pointer(),
                    job.out().source().nf4().tensor().blocksize(), w.dIn.pointer());
            return;
        }
        long bytes = n * job.srcFormat().sizeInBytes();
        src.position(0).limit((int) bytes);
        in.put(src);
        JCuda.cudaMemcpyAsync(w.dIn.pointer(), w.hostIn.pointer(), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice, w.stream.runtime());
    }

    /** The worker's dIn (W of the block, {@code bytes} long) copied to a new heap buffer; waits for the stream. */
    ByteBuffer downloadW(Worker w, long bytes) {
        byte[] a = new byte[Math.toIntExact(bytes)];
        w.stream.synchronize();
        JCuda.cudaMemcpy(Pointer.to(a), w.dIn.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        return ByteBuffer.wrap(a).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * The device part of a block, queued on the worker's stream: P = s·U·Vᵀ by cuBLAS DGEMM into
     * dWide, then one fused pass (PTX) that reads W (dIn, the output dtype), forms v = W + P in
     * fp64, rounds it into dOut and lists the ambiguous elements.
     *
     * <p>Why not DGEMM with beta = 1 into a widened copy of W: that moves 38 bytes per BF16 element
     * (widen: 2 in, 8 out; DGEMM: 8 in, 8 out; round: 10 in, 2 out) and measured 1.7 to 2.0 times
     * the pinned host-to-device bandwidth on an H200; this form moves 20 and keeps the GPU off the
     * critical path. The result is the same: both are within the same error bound, and rounding
     * settles on the correctly rounded value either way.
     */
    void computeOnDevice(Worker w, Factors f, FloatFormat fmt, long row0, int rowCount, int cols, double boundK,
                         Pointer dIn, Pointer dWide, Pointer dOut) {
        product(w, f, row0, rowCount, cols, dWide);
        addAndRound(w, f, fmt, row0, rowCount, cols, boundK, dIn, dWide, dOut);
    }

    /** P = s·U·Vᵀ for rows [row0, row0 + rowCount), by cuBLAS DGEMM on the worker's stream. */
    void product(Worker w, Factors f, long row0, int rowCount, int cols, Pointer dWide) {
        // row-major P[rows, cols] is column-major Pᵀ[cols, rows]: Pᵀ = s · (Vᵀ as [cols, r]) · (U block as [r, rows])
        JCublas2.cublasDgemm(w.cublas.get(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N, cols, rowCount, f.rank,
                Pointer.to(new double[] {f.scale}), f.vt.pointer(), cols, f.u.at(row0 * f.rank * Sizeof.DOUBLE), f.rank,
                Pointer.to(new double[] {0.0}), dWide, cols);
    }

    /** out = round(W + P) with the ambiguous elements listed, by the fused PTX kernel on the worker's stream. */
    void addAndRound(Worker w, Factors f, FloatFormat fmt, long row0, int rowCount, int cols, double boundK,
                     Pointer dIn, Pointer dWide, Pointer dOut) {
        String type = fmt.dtype().name().toLowerCase(java.util.Locale.ROOT);
        JCuda.cudaMemsetAsync(w.counters.pointer(), 0, 3 * Sizeof.LONG, w.stream.runtime());
        launchRows(w, "merge_round_" + type, rowCount, cols,
                Pointer.to(dWide), Pointer.to(dIn), Pointer.to(dOut),
                Pointer.to(f.uNorm.at(row0 * Sizeof.DOUBLE)), Pointer.to(f.vNorm.pointer()), Pointer.to(new double[] {Math.abs(f.scale)}),
                Pointer.to(new double[] {boundK}),
                Pointer.to(new long[] {rowCount}), Pointer.to(new long[] {cols}), Pointer.to(new long[] {cols}), Pointer.to(new long[] {0}),
                Pointer.to(w.counters.pointer()), Pointer.to(w.ambiguous.pointer()), Pointer.to(new long[] {AMBIGUOUS_CAPACITY}));
    }

    @Override
    public void columnSums(TensorJob job, long row0, int rowCount, ByteBuffer src, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, src, sumSq, sumErr);
    }

    private void launchRows(Worker w, String kernel, int rows, int cols, Pointer... params) {
        int block = 256;
        int gx = (cols + block - 1) / block;
        int gy = Math.min(rows, 65535);
        JCudaDriver.cuLaunchKernel(functions.get(kernel), gx, gy, 1, block, 1, 1, 0, w.stream.driver(), Pointer.to(params), null);
    }

    void bindContext() {
        JCudaDriver.cuCtxSetCurrent(context);
    }

    Worker worker() {
        Worker w = worker.get();
        if (w == null) {
            bindContext();
            JCuda.cudaSetDevice(ordinal);
            w = new Worker(blockBytes);
            worker.set(w);
            synchronized (workers) {
                workers.add(w);
            }
        }
        return w;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("backend closed twice");
        }
        closed = true;
        bindContext();
        synchronized (workers) {
            for (Worker w : workers) {
                w.stream.synchronize();
            }
        }
        for (CudaRequantization r : new ArrayList<>(requantizations)) {
            r.close(); // left open by a failed merge
        }
        for (Factors f : factors.values()) {
            f.close();
        }
        synchronized (workers) {
            for (Worker w : workers) {
                w.close();
            }
        }
        synchronized (blockBuffers) {
            for (PinnedMemory m : blockBuffers) {
                m.close();
            }
        }
        pool.close();
        for (PtxModule m : modules) {
            m.close();
        }
        CUdevice dev = new CUdevice();
        JCudaDriver.cuDeviceGet(dev, ordinal);
        JCudaDriver.cuDevicePrimaryCtxRelease(dev);
    }

    /** One tensor's factors in fp64 on the device. */
    static final class Factors implements AutoCloseable {
        final DeviceMemory u;
        final DeviceMemory vt;
        final DeviceMemory uNorm;
        final DeviceMemory vNorm;
        final int rank;
        final double scale;
        /** For an NF4 source: the decoded absmax of every block of the weight. */
        DeviceMemory sourceAbsmax;

        Factors(LowRankTerm t) {
            this(t, null);
        }

        /** The factors in memory from {@code pool} (newly allocated when it is null). */
        Factors(LowRankTerm t, DevicePool pool) {
            rank = t.rank();
            scale = t.scale();
            u = upload(pool, t.u());
            vt = upload(pool, t.vt());
            uNorm = upload(pool, t.uNorms());
            vNorm = upload(pool, t.vNorms());
        }

        private static DeviceMemory upload(DevicePool pool, double[] a) {
            DeviceMemory d = Nf4Kernels.take(pool, (long) a.length * Sizeof.DOUBLE);
            JCuda.cudaMemcpy(d.pointer(), Pointer.to(a), (long) a.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyHostToDevice);
            return d;
        }

        @Override
        public void close() {
            u.close();
            vt.close();
            uNorm.close();
            vNorm.close();
            if (sourceAbsmax != null) {
                sourceAbsmax.close();
            }
        }
    }

    /** What one pipeline thread uses: a stream, a cuBLAS handle, and its buffers. */
    static final class Worker implements AutoCloseable {
        final CudaStream stream = new CudaStream();
        final CublasHandle cublas = new CublasHandle(stream);
        final PinnedMemory hostIn;
        final PinnedMemory hostCounters = new PinnedMemory(3 * Sizeof.LONG);
        final PinnedMemory hostAmbiguous = new PinnedMemory((long) AMBIGUOUS_CAPACITY * Sizeof.LONG);
        final DeviceMemory dIn;
        final DeviceMemory dOut;
        final DeviceMemory dWide;
        /** An NF4 block's packed codes: half a byte an element, and a block holds at most blockBytes / 2 elements. */
        final DeviceMemory dPacked;
        final DeviceMemory counters = new DeviceMemory(3 * Sizeof.LONG);
        final DeviceMemory ambiguous = new DeviceMemory((long) AMBIGUOUS_CAPACITY * Sizeof.LONG);

        Worker(int blockBytes) {
            hostIn = new PinnedMemory(blockBytes);
            dIn = new DeviceMemory(blockBytes);
            dOut = new DeviceMemory(blockBytes);
            // the widest case: BF16/F16 blocks widen 4x to fp64
            dWide = new DeviceMemory((long) blockBytes * 4);
            dPacked = new DeviceMemory(blockBytes / 4 + 16);
        }

        @Override
        public void close() {
            stream.synchronize();
            cublas.close();
            stream.close();
            hostIn.close();
            hostCounters.close();
            hostAmbiguous.close();
            dIn.close();
            dOut.close();
            dWide.close();
            dPacked.close();
            counters.close();
            ambiguous.close();
        }
    }
}
