package org.loramerge.engine.cuda;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.DType;
import org.loramerge.quant.BnbInt8Format;
import org.loramerge.quant.Fp8Output;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedOutput;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;

/**
 * {@code merge --to fp8} and {@code merge --to int8} of one weight on the GPU, with the bytes of
 * the CPU path (Fp8Requantizer, BnbInt8Format's Int8Requantizer). Per row block, on the worker's
 * stream: the base's codes go up and are dequantized into W, P = s·U·Vᵀ (DGEMM), X = round(W + P)
 * settled exactly ({@link #mergeBlock}), then X and W are requantized side by side
 * (kernels/quant.cu fp8_requant, int8_requant): the block's codes go into the worker's
 * {@link DeviceWorker#packed} buffer and come back, each quantization block's scale stays in a
 * whole-weight array on the device until {@link #finish}, and its survival sums (and the count of
 * merged values the format cannot take) come back with the codes and are added by band in order.
 *
 * <p>Covered ({@link #covers}): an FP8 output whose scales are per block of the base's grid (128 x
 * 128 or any other), per row or per group of columns, a GPTQ or AWQ weight quantized to FP8 in 128 x
 * 128 blocks, and an LLM.int8 weight, whose quantization blocks never straddle two row blocks; a
 * band of blocks must fit a worker's buffers. An FP8 weight with one scale for the whole tensor,
 * whose scale needs the whole merged weight's absmax before any code, is
 * {@link CudaFp8TensorRequantization}'s.
 *
 * <p>The survival figures are the CPU's, summed in another order (per block, in two steps), so they
 * agree to about 1e-12 relative; the counts of changed codes and the written bytes are identical.
 * A merged value the format cannot take (NaN, infinity, past fp16 for int8) is refused with the
 * CPU requantizer's own error, raised by running it on the block's X and W.
 */
final class CudaByteRequantization extends DeviceRequantization {
    private final QuantizedWeight base;
    private final boolean int8;
    private final long rows;
    private final long cols;
    /** Quantization blocks: blockRows x blockCols, gridCols a band (row of blocks); int8: 1 x cols, one a band. */
    private final long blockRows;
    private final long blockCols;
    private final long gridCols;
    private final long bands;
    private final DeviceMemory scales;
    private final DeviceMemory sums;
    /** Each band's survival sums, by band. */
    private final ConcurrentHashMap<Long, Requantizer.Change> changes = new ConcurrentHashMap<>();

    CudaByteRequantization(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        super(backend, device, job);
        this.base = job.out().source().quantized();
        this.int8 = base instanceof BnbInt8Format.Int8Weight;
        this.rows = job.rows();
        this.cols = job.cols();
        long[] grid = grid(base, job.out().quantizedOutput(), cols);
        this.blockRows = grid[0];
        this.blockCols = grid[1];
        this.gridCols = (cols + blockCols - 1) / blockCols;
        this.bands = (rows + blockRows - 1) / blockRows;
        this.scales = take(bands * gridCols * Sizeof.FLOAT);
        this.sums = take(5 * bands * gridCols * Sizeof.DOUBLE);
    }

    /**
     * {blockRows, blockCols} of the quantization blocks of weight {@code w}'s output {@code out} (as its
     * CPU requantizer's), or null when it has none this class takes.
     */
    private static long[] grid(QuantizedWeight w, QuantizedOutput out, long cols) {
        if (w instanceof BnbInt8Format.Int8Weight) {
            return new long[] {1, cols};
        }
        if (out instanceof Fp8Output && !((Fp8Output) out).isPerTensor()) {
            return new long[] {((Fp8Output) out).blockRows(), ((Fp8Output) out).blockCols()};
        }
        return null;
    }

    /**
     * Whether this class requantizes {@code job} on the device (else the CPU engine does): an FP8
     * output with a scale per block, row or group of columns (of an FP8 weight with that scheme, or
     * of a GPTQ or AWQ weight in 128 x 128 blocks), or an INT8 output of
     * an LLM.int8 weight, the weight's own [out, in] in one dtype throughout, and a band of
     * quantization blocks (the fewest rows a row block takes) within a worker's buffers of
     * {@code blockBytes}. The caller checks the merge itself (CudaBackend#onGpu, one segment, no DoRA).
     */
    static boolean covers(TensorJob job, int blockBytes) {
        QuantizedWeight w = job.out().source().quantized();
        if (w == null || job.out().quantizedOutput() == null || job.srcFormat() != job.dstFormat()) {
            return false;
        }
        String kind = job.out().quantizedOutput().kind();
        boolean fp8 = job.out().quantizedOutput() instanceof Fp8Output;
        boolean int8 = w instanceof BnbInt8Format.Int8Weight && kind.equals("INT8") && job.dstFormat().dtype() == DType.F32;
        if (!fp8 && !int8) {
            return false;
        }
        long[] shape = w.shape();
        if (shape.length != 2 || shape[0] != job.rows() || shape[1] != job.cols()) {
            return false;
        }
        long[] grid = grid(w, job.out().quantizedOutput(), job.cols());
        return grid != null && grid[0] * job.cols() * job.dstFormat().sizeInBytes() <= blockBytes;
    }

    @Override
    public int blockElements() {
        return Math.toIntExact(blockRows * cols);
    }

    /** One byte a code. */
    @Override
    public long codesOffset(long firstElement) {
        return firstElement;
    }

    @Override
    public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
        DeviceWorker w = device.worker();
        long first = row0 * cols;
        long count = rowCount * cols;
        if (row0 % blockRows != 0 || (rowCount % blockRows != 0 && row0 + rowCount != rows)) {
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") do not cover whole bands of "
                    + blockRows + " rows");
        }
        long bytes = count * format.sizeInBytes();
        if (bytes > w.output().sizeInBytes()) {
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") are " + bytes + " bytes, more than the "
                    + w.output().sizeInBytes() + "-byte device buffers");
        }
        long[] merged = mergeBlock(w, row0, rowCount, src, stats);
        long overflows = merged[0];
        long nans = merged[1];
        QuantKernels k = device.quant();
        if (int8) {
            k.int8Requant(w.stream(), w.output().pointer(), w.input().pointer(), w.wide().pointer(), row0, rowCount, cols, w.packed().pointer(),
                    scales.pointer(), sums.pointer());
        } else {
            k.fp8Requant(w.stream(), format, w.output().pointer(), w.input().pointer(), w.wide().pointer(), row0, rowCount, cols, blockRows,
                    blockCols, gridCols, w.packed().pointer(), scales.pointer(), sums.pointer());
        }
        JCuda.cudaMemcpyAsync(w.hostIn().pointer(), w.packed().pointer(), count, cudaMemcpyKind.cudaMemcpyDeviceToHost, w.stream().runtime());
        long band0 = row0 / blockRows;
        long bandCount = (rowCount + blockRows - 1) / blockRows;
        double[] s = new double[Math.toIntExact(5 * bandCount * gridCols)];
        w.synchronize();
        // the worker's stream is done: a plain copy on the legacy stream reads what the kernel wrote
        JCuda.cudaMemcpy(Pointer.to(s), sums.at(5 * band0 * gridCols * Sizeof.DOUBLE), (long) s.length * Sizeof.DOUBLE,
                cudaMemcpyKind.cudaMemcpyDeviceToHost);
        double bad = 0;
        for (int q = 0; q < s.length / 5; q++) {
            bad += s[5 * q + 4];
        }
        if (bad > 0 || overflows > 0 || nans > 0) {
            throw refusal(w, first, count, bytes);
        }
        byte[] codes = new byte[Math.toIntExact(count)];
        w.hostIn().buffer().get(codes);
        for (long b = 0; b < bandCount; b++) {
            long changed = 0;
            double sq = 0;
            double dot = 0;
            double d2 = 0;
            for (long c = 0; c < gridCols; c++) {
                int q = (int) (5 * (b * gridCols + c));
                changed += (long) s[q];
                sq += s[q + 1];
                dot += s[q + 2];
                d2 += s[q + 3];
            }
            changes.put(band0 + b, new Requantizer.Change(changed, sq, dot, d2));
        }
        return ByteBuffer.wrap(codes);
    }

    /**
     * The error of the CPU path for a row block that holds a merged value the format cannot take:
     * the block's X and W come down and the CPU requantizer encodes them, which raises it.
     */
    private Exception refusal(DeviceWorker w, long first, long count, long bytes) {
        ByteBuffer x = w.download(w.output(), bytes);
        ByteBuffer wv = w.download(w.input(), bytes);
        try {
            job.out().quantizedOutput().requantizer(base).encode(first, Math.toIntExact(count), x, wv, new double[Math.toIntExact(count)]);
        } catch (QuantException e) {
            return e;
        }
        return new IllegalStateException(job.out().name() + ": the kernel counted merged values the format cannot take that are not there");
    }

    @Override
    public Result finish() {
        int n = Math.toIntExact(bands * gridCols);
        float[] s = new float[n];
        device.bindContext();
        JCuda.cudaMemcpy(Pointer.to(s), scales.pointer(), (long) n * Sizeof.FLOAT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        ByteBuffer b = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : s) {
            b.putFloat(v);
        }
        b.flip();
        List<ByteBuffer> tail = new ArrayList<>(List.of(b));
        if (int8) {
            if (base.tensorNames().size() > 2) {
                tail.add(ByteBuffer.wrap(new byte[] {0})); // weight_format "row", as Int8Requantizer writes it
            }
        } else {
            for (Fp8Weight.Part p : ((Fp8Output) job.out().quantizedOutput()).extras()) {
                try {
                    tail.add(p.file().readAll(p.info())); // the activation scales, as Fp8Requantizer copies them
                } catch (IOException e) {
                    throw new UncheckedIOException("cannot read " + p.info().name() + " of " + p.file().path(), e);
                }
            }
        }
        return new Result(tail, List.of(() -> {
            Requantizer.Change total = Requantizer.Change.NONE;
            for (long band = 0; band < bands; band++) {
                total = total.plus(changes.getOrDefault(band, Requantizer.Change.NONE));
            }
            return total;
        }));
    }
}
