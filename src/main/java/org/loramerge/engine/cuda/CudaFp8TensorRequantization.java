package org.loramerge.engine.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.quant.Fp8Codec;
import org.loramerge.quant.Fp8Output;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.Requantizer;

/**
 * {@code merge --to fp8} on the GPU of an FP8 weight with one scale for the whole tensor, with the
 * bytes of the CPU path (Fp8Requantizer with one block the size of the weight). The scale needs the
 * whole merged weight's absmax before any code, so the weight is requantized in two steps. Per row
 * block, on the worker's stream, as any device requantization merges it ({@link #mergeBlock}: the
 * stored codes up, W dequantized, P = s·U·Vᵀ, X = round(W + P) settled exactly), then
 * fp8_tensor_stage (kernels/quant.cu) keeps the block's X, W and ΔW in whole-weight device buffers
 * and folds its max |X| and |W| into two device floats; no code comes back yet. {@link #finish}
 * computes the two scales from those maxima on the host, exactly as Fp8Requantizer does, and
 * fp8_tensor_requant encodes the whole weight and takes its survival sums per block of elements;
 * the codes come back once, into the calling thread's page-locked memory (valid until its next
 * finish: the pipeline writes them first, Requantize), and are written with the scale ({@link Result#codes}).
 *
 * <p>Device memory held for the weight: X and W in its dtype, ΔW in fp64, and at the end its codes,
 * {@link #heldBytes} in all (13 bytes an element for BF16: 0.6 GB for a 7B model's largest
 * projection, 11008 x 4096). A weight past {@link #MAX_HELD_BYTES} ({@link #covers}), or one the
 * device has no room for when it comes (CudaBackend#openRequantization), is requantized by the CPU
 * engine.
 *
 * <p>The survival figures are the CPU's, summed in another order (per thread, block and then in
 * block order), so they agree to about 1e-12 relative; the codes, the scale and the count of changed
 * codes are identical. A merged value FP8 cannot take (NaN, infinity) is refused with the CPU
 * requantizer's own error, raised by running it on the block's X and W.
 */
final class CudaFp8TensorRequantization extends DeviceRequantization {
    /** The most device memory one weight may hold: as much as extract's ΔW of one weight (CudaWeightDelta). */
    static final long MAX_HELD_BYTES = CudaWeightDelta.MAX_DELTA_BYTES;
    /** Elements a block of fp8_tensor_requant takes at least, so that a block's setup is paid over many. */
    private static final long ELEMENTS_PER_BLOCK = 1 << 14;
    private static final int MAX_BLOCKS = 4096;

    private final Fp8Output output;
    private final long n;
    private final DeviceMemory xAll;
    private final DeviceMemory wAll;
    private final DeviceMemory dwAll;
    /** max |X| and max |W| as float bits, +0.0f before the first block. */
    private final DeviceMemory amax;

    CudaFp8TensorRequantization(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        super(backend, device, job);
        this.output = (Fp8Output) job.out().quantizedOutput();
        this.n = (long) job.rows() * job.cols();
        long size = format.sizeInBytes();
        this.xAll = take(n * size);
        this.wAll = take(n * size);
        this.dwAll = take(n * Sizeof.DOUBLE);
        this.amax = take(2 * Sizeof.FLOAT);
        DeviceWorker w = device.worker();
        JCuda.cudaMemsetAsync(amax.pointer(), 0, 2 * Sizeof.FLOAT, w.stream().runtime());
        w.synchronize(); // zero before any worker's stream folds a maximum into it
    }

    /** Device bytes the weight holds: X and W in {@code bytesPerElement}, ΔW in fp64, its codes at the end. */
    static long heldBytes(long elements, int bytesPerElement) {
        return elements * (2L * bytesPerElement + Sizeof.DOUBLE + 1);
    }

    /**
     * Whether this class requantizes {@code job} on the device: an FP8 output with one scale for the
     * whole tensor ({@link Fp8Output#isPerTensor}) of an FP8 weight [rows, cols] in one dtype
     * throughout, whose codes one Java array holds, whose {@link #heldBytes} are within {@link
     * #MAX_HELD_BYTES}, and one of whose rows fits a worker's buffers of {@code blockBytes}. The
     * caller checks the merge itself (CudaBackend#onGpu, one segment, no DoRA).
     */
    static boolean covers(TensorJob job, int blockBytes) {
        if (!(job.out().quantizedOutput() instanceof Fp8Output) || !(job.out().source().quantized() instanceof Fp8Weight)
                || job.srcFormat() != job.dstFormat()) {
            return false;
        }
        Fp8Output o = (Fp8Output) job.out().quantizedOutput();
        long[] shape = job.out().source().quantized().shape();
        long elements = (long) job.rows() * job.cols();
        int size = job.dstFormat().sizeInBytes();
        return o.isPerTensor() && shape.length == 2 && shape[0] == job.rows() && shape[1] == job.cols() && elements <= Integer.MAX_VALUE - 8
                && heldBytes(elements, size) <= MAX_HELD_BYTES && (long) job.cols() * size <= blockBytes;
    }

    /** Any whole rows: the codes wait for {@link #finish}. */
    @Override
    public int blockElements() {
        return job.cols();
    }

    /** One byte a code. */
    @Override
    public long codesOffset(long firstElement) {
        return firstElement;
    }

    /** Merges and keeps the rows; returns no codes (they come with {@link #finish}). */
    @Override
    public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
        DeviceWorker w = device.worker();
        long first = row0 * job.cols();
        long count = (long) rowCount * job.cols();
        long bytes = count * format.sizeInBytes();
        if (bytes > w.output().sizeInBytes()) {
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") are " + bytes + " bytes, more than the "
                    + w.output().sizeInBytes() + "-byte device buffers");
        }
        long[] merged = mergeBlock(w, row0, rowCount, src, stats);
        int[] bad = new int[1];
        try (DeviceMemory counter = device.pool().take(Sizeof.INT)) {
            JCuda.cudaMemsetAsync(counter.pointer(), 0, Sizeof.INT, w.stream().runtime());
            device.quant().fp8TensorStage(w.stream(), format, w.output().pointer(), w.input().pointer(), w.wide().pointer(), count, first,
                    xAll.pointer(), wAll.pointer(), dwAll.pointer(), amax.pointer(), counter.pointer());
            w.synchronize();
            // the worker's stream is done: a plain copy on the legacy stream reads what the kernel wrote
            JCuda.cudaMemcpy(Pointer.to(bad), counter.pointer(), Sizeof.INT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        }
        if (bad[0] > 0 || merged[0] > 0 || merged[1] > 0) {
            throw refusal(w, first, count, bytes);
        }
        return ByteBuffer.allocate(0);
    }

    /** The CPU requantizer's error for a block that holds a merged value FP8 cannot take: it encodes the block's X and W, which raises it. */
    private Exception refusal(DeviceWorker w, long first, long count, long bytes) {
        ByteBuffer x = w.download(w.output(), bytes);
        ByteBuffer wv = w.download(w.input(), bytes);
        try {
            output.requantizer(job.out().source().quantized()).encode(first, Math.toIntExact(count), x, wv, new double[Math.toIntExact(count)]);
        } catch (QuantException e) {
            return e;
        }
        return new IllegalStateException(job.out().name() + ": the kernel counted merged values FP8 cannot take that are not there");
    }

    @Override
    public Result finish() {
        device.bindContext();
        int[] maxBits = new int[2];
        JCuda.cudaMemcpy(Pointer.to(maxBits), amax.pointer(), 2 * Sizeof.FLOAT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        float ax = Float.intBitsToFloat(maxBits[0]);
        float aw = Float.intBitsToFloat(maxBits[1]);
        // Fp8Requantizer's scales: torch's 448 / amax, the fp32 reciprocal times 448 (two roundings, as Java's float operations round)
        float sx = ax > 0 ? (1f / ax) * Fp8Codec.E4M3_MAX : 1f;
        float sw = aw > 0 ? (1f / aw) * Fp8Codec.E4M3_MAX : 1f;
        float invX = 1f / sx;
        float invW = 1f / sw;
        int blocks = (int) Math.max(1, Math.min(MAX_BLOCKS, n / ELEMENTS_PER_BLOCK));
        double[] sums = new double[5 * blocks];
        ByteBuffer codes;
        // on the calling thread's worker stream, the codes into its page-locked memory (DeviceWorker#downloadHeld)
        DeviceWorker w = device.worker();
        try (DeviceMemory c = device.pool().take(n); DeviceMemory out = device.pool().take(5L * blocks * Sizeof.DOUBLE)) {
            device.quant().fp8TensorRequant(w.stream(), format, xAll.pointer(), wAll.pointer(), dwAll.pointer(), n, sx, sw, invX, invW, blocks,
                    c.pointer(), out.pointer());
            codes = w.downloadHeld(c, n);
            JCuda.cudaMemcpy(Pointer.to(sums), out.pointer(), (long) sums.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        }
        Requantizer.Change change = Requantizer.Change.NONE;
        for (int b = 0; b < blocks; b++) {
            change = change.plus(new Requantizer.Change((long) sums[5 * b], sums[5 * b + 1], sums[5 * b + 2], sums[5 * b + 3]));
        }
        ByteBuffer scale = ByteBuffer.allocate(Float.BYTES).order(ByteOrder.LITTLE_ENDIAN).putFloat(invX);
        scale.flip();
        List<ByteBuffer> tail = new ArrayList<>(List.of(scale));
        for (Fp8Weight.Part p : output.extras()) {
            try {
                tail.add(p.file().readAll(p.info())); // the activation scales, as Fp8Requantizer copies them
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read " + p.info().name() + " of " + p.file().path(), e);
            }
        }
        Requantizer.Change total = change;
        return new Result(codes, tail, List.of(() -> total));
    }
}
