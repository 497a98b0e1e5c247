package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasHandle;
import jcuda.jcublas.cublasOperation;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaEvent_t;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.format.FloatFormat;

/**
 * What one thread uses on the device: a stream, a cuBLAS handle bound to it, pinned staging
 * buffers and device buffers for one row block, and the operations on that block, each queued on
 * the stream: load W ({@link #loadValues}, or {@link #loadStored} to dequantize on the device), form
 * P = s·U·Vᵀ ({@link #product}), add and round ({@link #addAndRound}), read the counters, copy the
 * result back. While one worker's block is in its host-to-device copy, another's computes and a
 * third's comes back, so disk, PCIe and GPU overlap.
 */
public final class DeviceWorker implements AutoCloseable {
    /** Elements whose bound straddles a rounding boundary that a block lists at most (kernels/round.cu). */
    public static final int AMBIGUOUS_CAPACITY = 1 << 16;

    private final CudaDevice device;
    private final CudaStream stream = new CudaStream();
    private final CublasHandle cublas = new CublasHandle(stream);
    /**
     * Page-locked staging for uploads, made on first use: a 16-bit merge whose rows are read into the
     * pipeline's own page-locked blocks never needs it.
     */
    private PinnedMemory hostIn;
    private final int blockBytes;
    private final PinnedMemory hostCounters = new PinnedMemory(COUNTERS * Sizeof.LONG);
    private final PinnedMemory hostAmbiguous = new PinnedMemory((long) AMBIGUOUS_CAPACITY * Sizeof.LONG);
    private final DeviceMemory dIn;
    private final DeviceMemory dOut;
    private final DeviceMemory dWide;
    /**
     * A quantized block's stored codes ({@link #loadStored}), as large as a block: at most one
     * byte an element (FP8, int8, 8-bit GPTQ) of at most blockBytes / 2 elements, and an AWQ
     * block's whole words; DeviceDequantizer#of checks a weight's worst block against it.
     */
    private final DeviceMemory dPacked;
    /** The kernels' counters: ambiguous, overflows, NaNs, left to the host. */
    private static final int COUNTERS = 4;
    private final DeviceMemory counters = new DeviceMemory(COUNTERS * Sizeof.LONG);
    private final DeviceMemory ambiguous = new DeviceMemory((long) AMBIGUOUS_CAPACITY * Sizeof.LONG);
    private final DeviceMemory forHost = new DeviceMemory((long) AMBIGUOUS_CAPACITY * Sizeof.LONG);
    /** The events that time a block's parts on the stream ({@link #mark}): where its upload starts and ends, and where a part's compute starts, ends and its download ends. */
    static final int MARK_LOAD_START = 0;
    static final int MARK_LOADED = 1;
    static final int MARK_PART_START = 2;
    static final int MARK_COMPUTED = 3;
    static final int MARK_DOWNLOADED = 4;
    private final cudaEvent_t[] marks = new cudaEvent_t[5];
    /** Page-locked memory of {@link #downloadHeld}, grown to the largest download asked; null until the first. */
    private PinnedMemory hostHeld;
    /** The shared block {@link #input()} holds ({@link #loadValuesOnce}), or null; its size in bytes. */
    private Object loadedBlock;
    private long loadedBytes;

    /**
     * The counters of a block, read once its stream is done.
     *
     * @param ambiguous elements merge_round could not settle by the error bound (more than
     *                  {@link #AMBIGUOUS_CAPACITY}: none was listed, the host merges the block)
     * @param overflows elements that overflowed to ±Inf
     * @param nans      NaN results from finite inputs
     * @param forHost   of the ambiguous ones, those {@link #settle} left to the host ({@link #forHostElements})
     */
    public record Counts(long ambiguous, long overflows, long nans, long forHost) {
    }

    DeviceWorker(CudaDevice device, int blockBytes) {
        this.device = device;
        this.blockBytes = blockBytes;
        dIn = new DeviceMemory(blockBytes);
        dOut = new DeviceMemory(blockBytes);
        // the widest case: BF16/F16 blocks widen 4x to fp64
        dWide = new DeviceMemory((long) blockBytes * 4);
        dPacked = new DeviceMemory(blockBytes);
        for (int i = 0; i < marks.length; i++) {
            marks[i] = new cudaEvent_t();
            JCuda.cudaEventCreate(marks[i]);
        }
    }

    /** Records event {@code slot} (a {@code MARK_} constant) on the stream, after the work queued so far. */
    void mark(int slot) {
        JCuda.cudaEventRecord(marks[slot], stream.runtime());
    }

    /** Nanoseconds of device time between two recorded events, once the stream has passed both. */
    long elapsedNanos(int fromSlot, int toSlot) {
        float[] ms = new float[1];
        JCuda.cudaEventElapsedTime(ms, marks[fromSlot], marks[toSlot]);
        return (long) (ms[0] * 1e6);
    }

    /** Device memory of a worker for blocks of {@code blockBytes}, about: W, the result, P in fp64 and a quantized block's stored codes. */
    static long deviceBytes(int blockBytes) {
        return 7L * blockBytes;
    }

    public CudaStream stream() {
        return stream;
    }

    /** The cuBLAS handle bound to {@link #stream()}. */
    cublasHandle cublas() {
        return cublas.get();
    }

    /** W of the current block, in its source dtype (or dequantized there). */
    public DeviceMemory input() {
        return dIn;
    }

    /** The rounded result of the current block. */
    public DeviceMemory output() {
        return dOut;
    }

    /** P of the current block, in fp64. */
    public DeviceMemory wide() {
        return dWide;
    }

    /**
     * The device buffer a quantized block's stored codes go up into ({@link #loadStored}); free
     * again once the dequantization queued after them has run, so a requantization writes a row
     * block's new codes there (one byte an element), later on the same stream.
     */
    public DeviceMemory packed() {
        return dPacked;
    }

    /** The pinned staging buffer for uploads; also usable for small downloads once the stream is idle. */
    public PinnedMemory hostIn() {
        if (hostIn == null) {
            hostIn = new PinnedMemory(blockBytes);
        }
        return hostIn;
    }

    /** Queues the upload of {@code bytes} bytes of {@code src} (from its position 0) into {@link #input()}. */
    public void loadValues(ByteBuffer src, long bytes) {
        loadedBlock = null;
        ByteBuffer in = hostIn().buffer();
        src.position(0).limit(Math.toIntExact(bytes));
        in.put(src);
        JCuda.cudaMemcpyAsync(dIn.pointer(), hostIn().pointer(), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice, stream.runtime());
    }

    /**
     * Queues the upload of {@code bytes} bytes of {@code src} (from its position 0) into
     * {@link #input()} straight from {@code src}, which must be page-locked and must not change
     * until the stream has passed the copy (the caller synchronizes before it hands src back).
     */
    public void loadPinned(ByteBuffer src, long bytes) {
        loadedBlock = null;
        ByteBuffer from = src.duplicate().clear();
        JCuda.cudaMemcpyAsync(dIn.pointer(), Pointer.to(from), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice, stream.runtime());
    }

    /**
     * {@link #loadValues} of a block that several merges of one pass take in turn on this worker
     * ({@code block} names it): uploaded for the first, and left in {@link #input()} for the others,
     * as no kernel writes W (they all take it {@code const}) and every other load forgets the block.
     * {@code src} is left positioned as {@link #loadValues} leaves it.
     */
    public void loadValuesOnce(ByteBuffer src, long bytes, Object block) {
        if (block != null && block == loadedBlock && bytes == loadedBytes) {
            src.position(0).limit(Math.toIntExact(bytes));
            src.position(src.limit());
            return;
        }
        loadValues(src, bytes);
        loadedBlock = block;
        loadedBytes = bytes;
    }

    /**
     * Queues rows {@code [row0, row0 + rowCount)} of a quantized weight into {@link #input()}:
     * their stored codes ({@code stored}, as the pipeline read them) are staged in page-locked
     * memory in the layout {@code d}'s kernel reads, go up, and are dequantized there into the
     * weight's dtype. Returns the bytes that went up.
     */
    public long loadStored(DeviceDequantizer d, ByteBuffer stored, long row0, int rowCount) {
        loadedBlock = null;
        long bytes = d.stagedBytes(row0, rowCount);
        if (bytes > dPacked.sizeInBytes() || bytes > hostIn().sizeInBytes()) {
            throw new IllegalArgumentException(bytes + " bytes of stored codes do not fit the " + dPacked.sizeInBytes() + "-byte staging buffers");
        }
        d.stage(stored, row0, rowCount, hostIn().buffer());
        JCuda.cudaMemcpyAsync(dPacked.pointer(), hostIn().pointer(), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice, stream.runtime());
        d.dequantize(stream, dPacked.pointer(), row0, rowCount, dIn.pointer());
        return bytes;
    }

    /**
     * The device part of a block, queued on the stream: P = s·U·Vᵀ by cuBLAS DGEMM into
     * {@code wide}, then one fused pass (PTX) that reads W ({@code in}, the output dtype), forms
     * v = W + P in fp64, rounds it into {@code out} and lists the ambiguous elements.
     *
     * <p>Why not DGEMM with beta = 1 into a widened copy of W: that moves 38 bytes per BF16 element
     * (widen: 2 in, 8 out; DGEMM: 8 in, 8 out; round: 10 in, 2 out) and measured 1.7 to 2.0 times
     * the pinned host-to-device bandwidth on an H200; this form moves 20 and keeps the GPU off the
     * critical path. The result is the same: both are within the same error bound, and rounding
     * settles on the correctly rounded value either way.
     */
    public void mergeRound(DeviceFactors f, FloatFormat fmt, long row0, int rowCount, int cols, double boundK, Pointer in, Pointer wide,
                           Pointer out) {
        product(f, row0, rowCount, cols, wide);
        addAndRound(f, fmt, fmt, row0, rowCount, cols, boundK, in, wide, out);
    }

    /**
     * {@link #mergeRound} and {@link #settle} on the worker's own buffers, {@link #input()} (W in
     * {@code src}) to {@link #output()} (in {@code dst}; another format for a --dtype conversion):
     * the block rounded exactly, but for the rare elements left to the host ({@link #forHost}; all
     * the ambiguous ones for {@link DeviceFactors#folded() folded} factors, which are not settled here).
     */
    public void mergeRoundExactly(DeviceFactors f, FloatFormat src, FloatFormat dst, long row0, int rowCount, int cols, double boundK) {
        mergeRoundExactly(f, src, dst, row0, rowCount, cols, boundK, 0);
    }

    /**
     * {@link #mergeRoundExactly} of the rows that begin {@code firstElement} elements into
     * {@link #input()} and {@link #output()}: one term's part of a block whose rows several terms
     * share (an MoE expert stack, whose experts' terms each cover their own rows). {@code row0} is
     * the first row as a row of the term's U; the element indexes the counters list are relative to
     * {@code firstElement}.
     */
    public void mergeRoundExactly(DeviceFactors f, FloatFormat src, FloatFormat dst, long row0, int rowCount, int cols, double boundK,
                                  long firstElement) {
        Pointer in = dIn.at(firstElement * src.sizeInBytes());
        Pointer out = dOut.at(firstElement * dst.sizeInBytes());
        product(f, row0, rowCount, cols, dWide.pointer());
        addAndRound(f, src, dst, row0, rowCount, cols, boundK, in, dWide.pointer(), out);
        if (!f.folded()) {
            settle(f, src, dst, row0, cols, in, out);
        }
        // folded factors hold s·U rounded, not the terms' U: settled from them, an element would get
        // W + U'·V' exactly instead of W + Σ s·U·V; every ambiguous one is the host's (forHost)
    }

    /**
     * How many elements of the last {@link #mergeRoundExactly} with {@code f} the host must settle:
     * those {@link #settle} left, or, for folded factors (which the device does not settle from),
     * every ambiguous one.
     */
    public static long forHost(DeviceFactors f, Counts counted) {
        return f.folded() ? counted.ambiguous() : counted.forHost();
    }

    /** The indexes of the {@link #forHost} elements (little-endian longs, in no order). */
    public ByteBuffer forHostElements(DeviceFactors f, long count) {
        return f.folded() ? ambiguousElements(count) : forHostElements(count);
    }

    /** P = s·U·Vᵀ for rows [row0, row0 + rowCount), by cuBLAS DGEMM on the stream. */
    public void product(DeviceFactors f, long row0, int rowCount, int cols, Pointer wide) {
        // row-major P[rows, cols] is column-major Pᵀ[cols, rows]: Pᵀ = s · (Vᵀ as [cols, r]) · (U block as [r, rows])
        JCublas2.cublasDgemm(cublas.get(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N, cols, rowCount, f.rank(),
                Pointer.to(new double[] {f.scale()}), f.vt().pointer(), cols, f.u().at(row0 * f.rank() * Sizeof.DOUBLE), f.rank(),
                Pointer.to(new double[] {0.0}), wide, cols);
    }

    /** {@link #addAndRound(DeviceFactors, FloatFormat, FloatFormat, long, int, int, double, Pointer, Pointer, Pointer)} without a conversion. */
    public void addAndRound(DeviceFactors f, FloatFormat fmt, long row0, int rowCount, int cols, double boundK, Pointer in, Pointer wide,
                            Pointer out) {
        addAndRound(f, fmt, fmt, row0, rowCount, cols, boundK, in, wide, out);
    }

    /**
     * out = round(W + P) into {@code dst} with the ambiguous elements listed and the counters reset
     * first, by the fused kernel on the stream; W ({@code in}) is in {@code src}.
     */
    public void addAndRound(DeviceFactors f, FloatFormat src, FloatFormat dst, long row0, int rowCount, int cols, double boundK, Pointer in,
                            Pointer wide, Pointer out) {
        JCuda.cudaMemsetAsync(counters.pointer(), 0, COUNTERS * Sizeof.LONG, stream.runtime());
        device.merge().mergeRound(stream, dst, rowCount, cols,
                Pointer.to(wide), Pointer.to(in), Pointer.to(new int[] {MergeKernels.code(src)}), Pointer.to(out),
                Pointer.to(f.uNorm().at(row0 * Sizeof.DOUBLE)), Pointer.to(f.vNorm().pointer()), Pointer.to(new double[] {Math.abs(f.scale())}),
                Pointer.to(new double[] {boundK}),
                Pointer.to(new long[] {rowCount}), Pointer.to(new long[] {cols}), Pointer.to(new long[] {cols}), Pointer.to(new long[] {0}),
                Pointer.to(counters.pointer()), Pointer.to(ambiguous.pointer()), Pointer.to(new long[] {AMBIGUOUS_CAPACITY}));
    }

    /**
     * Queues the exact settling of the elements the last add-and-round listed (kernels/exact.cuh,
     * the device twin of the CPU engine's expansion arithmetic): each is recomputed exactly from W
     * ({@code in}, in {@code src}), U and Vᵀ and rewritten in {@code out} (in {@code dst}); the few
     * it cannot take are listed for the host ({@link Counts#forHost}). Reads the list's length on
     * the device: no wait.
     */
    public void settle(DeviceFactors f, FloatFormat src, FloatFormat dst, long row0, int cols, Pointer in, Pointer out) {
        device.merge().settle(stream, dst,
                Pointer.to(f.u().at(row0 * f.rank() * Sizeof.DOUBLE)), Pointer.to(f.vt().pointer()),
                Pointer.to(new long[] {f.rank()}), Pointer.to(new double[] {f.scale()}),
                Pointer.to(in), Pointer.to(new int[] {MergeKernels.code(src)}), Pointer.to(out), Pointer.to(new long[] {cols}),
                Pointer.to(new long[] {0}), Pointer.to(counters.pointer()), Pointer.to(ambiguous.pointer()),
                Pointer.to(new long[] {AMBIGUOUS_CAPACITY}), Pointer.to(forHost.pointer()));
    }

    /**
     * DoRA with one norm per output row, on the worker's own buffers: P = s·U·Vᵀ, then each row's
     * norm, magnitude scaling and rounding in one kernel ({@code dora_round}); the elements its bounds
     * cannot settle are listed for the host ({@link #ambiguousElements}). {@code magnitude} holds m
     * of the whole weight.
     */
    public void mergeRoundDora(DeviceFactors f, FloatFormat src, FloatFormat dst, long row0, int rowCount, int cols, double boundK,
                               DeviceMemory magnitude) {
        product(f, row0, rowCount, cols, dWide.pointer());
        JCuda.cudaMemsetAsync(counters.pointer(), 0, COUNTERS * Sizeof.LONG, stream.runtime());
        device.merge().doraRound(stream, dst, rowCount,
                Pointer.to(dWide.pointer()), Pointer.to(dIn.pointer()), Pointer.to(new int[] {MergeKernels.code(src)}), Pointer.to(dOut.pointer()),
                Pointer.to(f.uNorm().at(row0 * Sizeof.DOUBLE)), Pointer.to(f.vNorm().pointer()), Pointer.to(new double[] {Math.abs(f.scale())}),
                Pointer.to(new double[] {boundK}), Pointer.to(magnitude.at(row0 * Sizeof.DOUBLE)),
                Pointer.to(new long[] {rowCount}), Pointer.to(new long[] {cols}),
                Pointer.to(counters.pointer()), Pointer.to(ambiguous.pointer()), Pointer.to(new long[] {AMBIGUOUS_CAPACITY}));
    }

    /** The element indexes the last add-and-round listed as ambiguous (little-endian longs, in no order); at most {@link #AMBIGUOUS_CAPACITY}. */
    public ByteBuffer ambiguousElements(long count) {
        JCuda.cudaMemcpyAsync(hostAmbiguous.pointer(), ambiguous.pointer(), count * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream.runtime());
        stream.synchronize();
        return hostAmbiguous.buffer();
    }

    /**
     * out = round(W + Δ) of a block of a dense combination (kernels/combine.cu combine_round), W in
     * {@link #input()}, the result in {@link #output()}, the ambiguous elements listed and the
     * counters reset first; queued on the stream.
     */
    public void combineRound(DeviceMemory uAll, DeviceMemory vtAll, DeviceMemory ip, DeviceMemory dp, FloatFormat fmt, long row0, int rowCount,
                             int cols) {
        JCuda.cudaMemsetAsync(counters.pointer(), 0, COUNTERS * Sizeof.LONG, stream.runtime());
        device.combine().combineRound(stream, fmt, rowCount, cols,
                Pointer.to(uAll.pointer()), Pointer.to(vtAll.pointer()), Pointer.to(ip.pointer()), Pointer.to(dp.pointer()),
                Pointer.to(new long[] {row0}), Pointer.to(dIn.pointer()), Pointer.to(dOut.pointer()),
                Pointer.to(new long[] {rowCount}), Pointer.to(new long[] {cols}), Pointer.to(new long[] {0}),
                Pointer.to(counters.pointer()), Pointer.to(ambiguous.pointer()), Pointer.to(new long[] {AMBIGUOUS_CAPACITY}));
    }

    /** The last block's counters, once the stream has done everything queued. */
    public Counts counters() {
        JCuda.cudaMemcpyAsync(hostCounters.pointer(), counters.pointer(), COUNTERS * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream.runtime());
        stream.synchronize();
        ByteBuffer c = hostCounters.buffer();
        return new Counts(c.getLong(0), c.getLong(8), c.getLong(16), c.getLong(24));
    }

    /** The element indexes {@link #settle} left to the host (little-endian longs, in no order). */
    public ByteBuffer forHostElements(long count) {
        JCuda.cudaMemcpyAsync(hostAmbiguous.pointer(), forHost.pointer(), count * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost,
                stream.runtime());
        stream.synchronize();
        return hostAmbiguous.buffer();
    }

    /** Queues the copy of {@code bytes} of {@link #output()} into {@code dst}: asynchronous and direct when dst is page-locked. */
    public void copyOutputTo(ByteBuffer dst, long bytes) {
        JCuda.cudaMemcpyAsync(Pointer.to(dst), dOut.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.runtime());
    }

    /** {@link #copyOutputTo} of the {@code bytes} at {@code byteOffset} of {@link #output()} into the same place of {@code dst}. */
    public void copyOutputTo(ByteBuffer dst, long byteOffset, long bytes) {
        if (byteOffset == 0) {
            copyOutputTo(dst, bytes);
            return;
        }
        // a slice starts at its own address (position 0), whatever the buffer's position
        ByteBuffer at = dst.duplicate().clear().position(Math.toIntExact(byteOffset)).slice();
        JCuda.cudaMemcpyAsync(Pointer.to(at), dOut.at(byteOffset), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.runtime());
    }

    /** The first {@code bytes} of {@code m} copied to a new heap buffer, after the work queued on the stream. */
    public ByteBuffer download(DeviceMemory m, long bytes) {
        byte[] a = new byte[Math.toIntExact(bytes)];
        stream.synchronize();
        JCuda.cudaMemcpy(Pointer.to(a), m.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        return ByteBuffer.wrap(a).order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * The first {@code bytes} of {@code m}, after the work queued on the stream, copied on this
     * worker's stream into page-locked memory it keeps (grown to the largest download asked): a
     * little-endian view, valid until this worker's next call. For large downloads (a weight's codes
     * held back to its end): {@link #download}'s cudaMemcpy into a Java array runs on the device's
     * legacy stream, where every worker's small read-backs wait behind it, and at pageable speed.
     */
    public ByteBuffer downloadHeld(DeviceMemory m, long bytes) {
        if (hostHeld == null || hostHeld.sizeInBytes() < bytes) {
            if (hostHeld != null) {
                stream.synchronize();
                hostHeld.close();
                hostHeld = null;
            }
            hostHeld = new PinnedMemory(bytes);
        }
        JCuda.cudaMemcpyAsync(hostHeld.pointer(), m.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.runtime());
        stream.synchronize();
        return hostHeld.buffer().limit(Math.toIntExact(bytes)).slice().order(ByteOrder.LITTLE_ENDIAN);
    }

    public void synchronize() {
        stream.synchronize();
    }

    @Override
    public void close() {
        stream.synchronize();
        cublas.close();
        stream.close();
        if (hostIn != null) {
            hostIn.close();
        }
        hostCounters.close();
        hostAmbiguous.close();
        if (hostHeld != null) {
            hostHeld.close();
        }
        dIn.close();
        dOut.close();
        dWide.close();
        dPacked.close();
        counters.close();
        ambiguous.close();
        forHost.close();
        for (cudaEvent_t e : marks) {
            JCuda.cudaEventDestroy(e);
        }
    }
}
