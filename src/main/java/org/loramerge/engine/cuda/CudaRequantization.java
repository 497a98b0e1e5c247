package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.DynamicMap;
import org.loramerge.quant.FourBitCode;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Output;
import org.loramerge.quant.Nf4Requantizer;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantState;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;

import static org.loramerge.quant.QuantException.Reason.NON_FINITE;

/**
 * {@code merge --to nf4} and {@code --to fp4} of one weight on the GPU, with the same bytes as the
 * CPU path ({@link Nf4Requantizer}), from any base the device dequantizes: an NF4 or FP4 weight
 * requantized with its own settings, or a GPTQ or AWQ weight quantized to NF4 ({@link Nf4Output}).
 * Per row block, on the worker's stream: the base's stored codes go up and are dequantized into W
 * ({@link DeviceDequantizer}; an AWQ weight of very long rows goes up as the host's dequantized
 * values), P = s·U·Vᵀ (DGEMM), X = round(W + P) with the elements at a rounding boundary settled
 * exactly there ({@link #mergeBlock}), then X and W are requantized in the output's code book and the
 * survival sums of each block taken (nf4_requant, fp4_requant), and only X's packed codes come back.
 * The codes of both and their absmax stay on the device for the whole weight (n bytes and 8 bytes a
 * block): {@link #finish} double-quantizes both absmax sets there (the offset's exact sum on the
 * device, its one rounding on the host), decodes the scales and measures what survived
 * (nf4_measure, fp4_measure), so the survival figures cost no extra pass over the host.
 *
 * <p>The figures are Nf4Requantizer's, summed in another order (per warp and tile, not element by
 * element), so they agree with the CPU's to about 1e-12 relative; the written bytes are identical.
 */
final class CudaRequantization extends DeviceRequantization {
    /** The output's quant state, its offset a placeholder (Nf4Output#template): blocksize, dtype, shape, code book, nesting. */
    private final QuantState state;
    private final FourBitCode book;
    private final long numElements;
    private final int blocksize;
    private final long numBlocks;
    private final DeviceMemory packedX;
    private final DeviceMemory packedW;
    private final DeviceMemory absmaxX;
    private final DeviceMemory absmaxW;
    private final DeviceMemory sums;

    CudaRequantization(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        super(backend, device, job);
        this.state = ((Nf4Output) job.out().quantizedOutput()).template();
        this.book = state.code();
        this.numElements = state.numElements();
        this.blocksize = state.blocksize();
        this.numBlocks = state.numBlocks();
        long packedBytes = Nf4Codec.packedBytes(numElements);
        packedX = take(packedBytes);
        packedW = take(packedBytes);
        absmaxX = take(numBlocks * Sizeof.FLOAT);
        absmaxW = take(numBlocks * Sizeof.FLOAT);
        sums = take(3 * numBlocks * Sizeof.DOUBLE);
    }

    /**
     * Whether this class requantizes {@code job} on the device (else the CPU engine does): a 4-bit
     * output (NF4 or FP4) of a weight of one dtype throughout whose elements are the job's rows x
     * cols and whose packed codes one Java array holds, as the CPU requantizer's. The caller checks
     * the merge itself (CudaBackend#onGpu, one segment, no DoRA); any source the device merges will
     * do, whether it dequantizes it ({@link DeviceDequantizer}) or takes its values from the host.
     * The fewest rows a block of whole quantization blocks can have ({@link
     * Requantizer#rowsOfWholeBlocks}) must fit a worker's device buffers of {@code blockBytes}
     * in the output dtype: a blocksize of 4096 over rows of 4100 columns needs blocks of 1024 rows,
     * past 8 MiB of BF16, and such a weight is requantized by the CPU engine.
     */
    static boolean covers(TensorJob job, int blockBytes) {
        if (!(job.out().quantizedOutput() instanceof Nf4Output) || job.out().source().quantized() == null || job.srcFormat() != job.dstFormat()) {
            return false;
        }
        QuantState s = ((Nf4Output) job.out().quantizedOutput()).template();
        long cols = job.cols();
        long minRows = Requantizer.rowsOfWholeBlocks(cols, s.blocksize());
        return s.dtype() == job.dstFormat().dtype() && s.numElements() == (long) job.rows() * job.cols()
                && Nf4Codec.packedBytes(s.numElements()) <= Integer.MAX_VALUE - 8
                && minRows * cols * job.dstFormat().sizeInBytes() <= blockBytes;
    }

    @Override
    public int blockElements() {
        return blocksize;
    }

    /** 4-bit codes, two a byte: a range from an even element starts at byte firstElement / 2. */
    @Override
    public long codesOffset(long firstElement) {
        return firstElement / 2;
    }

    @Override
    public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
        DeviceWorker w = device.worker();
        int cols = job.cols();
        long first = row0 * cols;
        long count = (long) rowCount * cols;
        if (first % blocksize != 0 || (count % blocksize != 0 && first + count != numElements)) {
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") do not cover whole " + book
                    + " blocks");
        }
        if (count * format.sizeInBytes() > w.input().sizeInBytes()) { // covers() keeps such weights on the CPU
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") exceed the device block of "
                    + w.input().sizeInBytes() + " bytes");
        }
        long[] bad = mergeBlock(w, row0, rowCount, src, stats);
        if (bad[0] > 0 || bad[1] > 0) {
            throw nonFinite(w, first, count, count * format.sizeInBytes());
        }
        device.nf4().requant(w.stream(), book, format, w.output().pointer(), w.input().pointer(), w.wide().pointer(), first, count, blocksize,
                packedX.pointer(), packedW.pointer(), absmaxX.pointer(), absmaxW.pointer(), sums.pointer());
        long from = first / 2;
        int out = (int) (Nf4Codec.packedBytes(first + count) - from);
        byte[] codes = new byte[out];
        JCuda.cudaMemcpyAsync(w.hostIn().pointer(), packedX.at(from), out, cudaMemcpyKind.cudaMemcpyDeviceToHost, w.stream().runtime());
        w.synchronize();
        w.hostIn().buffer().get(codes);
        return ByteBuffer.wrap(codes);
    }

    /** The error the CPU path raises for the first non-finite merged value of the block (Nf4Encoder). */
    private QuantException nonFinite(DeviceWorker w, long first, long count, long bytes) {
        ByteBuffer b = w.download(w.output(), bytes);
        for (long i = 0; i < count; i++) {
            float v = (float) format.decode(format.bitsAt(b, i));
            if (!Float.isFinite(v)) {
                return new QuantException(NON_FINITE, job.out().source().file().path(), job.out().name(), "element " + (first + i) + " is " + v
                        + "; NF4 cannot represent it and it would poison its block's absmax");
            }
        }
        throw new IllegalStateException(job.out().name() + ": the kernel counted non-finite values that are not there");
    }

    @Override
    public Result finish() throws QuantException {
        device.bindContext(); // the pipeline finishes a weight on whichever worker is free (Requantize)
        Nf4Kernels k = device.nf4();
        int blocks = Math.toIntExact(numBlocks);
        long tiles = Nf4Kernels.tiles(numElements);
        try (CudaStream s = new CudaStream(); DeviceMemory out = device.pool().take(4 * tiles * Sizeof.DOUBLE)) {
            QuantState done;
            float[] absmax = null;
            DoubleQuant.Result dq = null;
            Requantizer.Change change;
            if (state.isDoubleQuant()) {
                try (DeviceMemory map = Nf4Kernels.uploadFloats(device.pool(), s, DynamicMap.signed());
                     DoubleQuantized x = doubleQuantize(s, absmaxX, map);
                     DoubleQuantized w = doubleQuantize(s, absmaxW, map)) {
                    k.measure(s, book, format, packedX.pointer(), packedW.pointer(), x.scales.pointer(), w.scales.pointer(), sums.pointer(),
                            numElements, blocksize, out.pointer());
                    change = sumTiles(s, out, tiles);
                    byte[] codes = new byte[blocks];
                    float[] nested = new float[(blocks + DoubleQuant.NESTED_BLOCKSIZE - 1) / DoubleQuant.NESTED_BLOCKSIZE];
                    JCuda.cudaMemcpy(Pointer.to(codes), x.codes.pointer(), blocks, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                    JCuda.cudaMemcpy(Pointer.to(nested), x.nested.pointer(), (long) nested.length * Sizeof.FLOAT,
                            cudaMemcpyKind.cudaMemcpyDeviceToHost);
                    dq = new DoubleQuant.Result(codes, nested, x.offset);
                    done = state.withNested(new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, x.offset));
                }
            } else {
                k.measure(s, book, format, packedX.pointer(), packedW.pointer(), absmaxX.pointer(), absmaxW.pointer(), sums.pointer(),
                        numElements, blocksize, out.pointer());
                change = sumTiles(s, out, tiles);
                absmax = new float[blocks];
                JCuda.cudaMemcpy(Pointer.to(absmax), absmaxX.pointer(), (long) blocks * Sizeof.FLOAT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                done = state.withNested(null);
            }
            List<ByteBuffer> tail = Nf4Tensor.tail(done, absmax, dq);
            Requantizer.Change measured = change;
            return new Result(tail, List.of(() -> measured));
        }
    }

    /** Adds the measure kernel's tiles in order (waits for the stream). */
    private static Requantizer.Change sumTiles(CudaStream s, DeviceMemory out, long tiles) {
        double[] t = new double[Math.toIntExact(4 * tiles)];
        s.synchronize();
        JCuda.cudaMemcpy(Pointer.to(t), out.pointer(), (long) t.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        long changed = 0;
        double sq = 0;
        double dot = 0;
        double d2 = 0;
        for (int i = 0; i < tiles; i++) {
            changed += (long) t[4 * i];
            sq += t[4 * i + 1];
            dot += t[4 * i + 2];
            d2 += t[4 * i + 3];
        }
        return new Requantizer.Change(changed, sq, dot, d2);
    }

    /** One absmax set double-quantized on the device, and its decoded scales. */
    private static final class DoubleQuantized implements AutoCloseable {
        final float offset;
        final DeviceMemory codes;
        final DeviceMemory nested;
        final DeviceMemory scales;

        DoubleQuantized(float offset, DeviceMemory codes, DeviceMemory nested, DeviceMemory scales) {
            this.offset = offset;
            this.codes = codes;
            this.nested = nested;
            this.scales = scales;
        }

        @Override
        public void close() {
            codes.close();
            nested.close();
            scales.close();
        }
    }

    /**
     * DoubleQuant.quantize of {@code absmax} on the device, then DoubleQuant.decode of the result
     * (waits for the stream). An offset past fp32 is refused as the CPU engine refuses it
     * ({@link DoubleQuant#requireFiniteMergedOffset}).
     */
    private DoubleQuantized doubleQuantize(CudaStream s, DeviceMemory absmax, DeviceMemory map) throws QuantException {
        Nf4Kernels k = device.nf4();
        float offset;
        try (DeviceMemory bucketSums = device.pool().take(512 * Sizeof.LONG)) {
            JCuda.cudaMemsetAsync(bucketSums.pointer(), 0, 512 * Sizeof.LONG, s.runtime());
            k.exponentSums(s, absmax.pointer(), numBlocks, bucketSums.pointer());
            long[] bucket = new long[512];
            s.synchronize();
            JCuda.cudaMemcpy(Pointer.to(bucket), bucketSums.pointer(), 512 * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            offset = DoubleQuant.offsetOfSums(bucket, numBlocks);
        }
        QuantizedWeight source = job.out().source().quantized();
        DoubleQuant.requireFiniteMergedOffset(offset, numBlocks, source.file().path(), source.weightName());
        long nestedBlocks = (numBlocks + DoubleQuant.NESTED_BLOCKSIZE - 1) / DoubleQuant.NESTED_BLOCKSIZE;
        DeviceMemory[] m = new DeviceMemory[3];
        try {
            m[0] = device.pool().take(numBlocks);
            m[1] = device.pool().take(nestedBlocks * Sizeof.FLOAT);
            m[2] = device.pool().take(numBlocks * Sizeof.FLOAT);
        } catch (RuntimeException e) {
            for (DeviceMemory d : m) {
                if (d != null) {
                    d.close();
                }
            }
            throw e;
        }
        k.doubleQuant(s, absmax.pointer(), numBlocks, offset, map.pointer(), m[0].pointer(), m[1].pointer());
        k.decodeAbsmax(s, m[0].pointer(), m[1].pointer(), map.pointer(), offset, DoubleQuant.NESTED_BLOCKSIZE, numBlocks, m[2].pointer());
        return new DoubleQuantized(offset, m[0], m[1], m[2]);
    }
}
