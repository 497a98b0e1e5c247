package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.DynamicMap;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Requantizer;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.Nf4Weight;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantState;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;

import static org.loramerge.quant.QuantException.Reason.NON_FINITE;

/**
 * {@code merge --to nf4} of one weight on the GPU, with the same bytes as the CPU path
 * ({@link Nf4Requantizer}). Per row block, on the worker's stream: the base's packed codes go up
 * (half a byte an element) and are dequantized into W (nf4_dequant), P = s·U·Vᵀ (DGEMM), X =
 * round(W + P) with the elements at a rounding boundary settled exactly there (merge_round, settle;
 * on the host for several adapters' terms folded into one, DeviceFactors#of), then
 * X and W are requantized and the survival sums of each block taken (nf4_requant), and only X's
 * packed codes come back. The codes of both and their absmax stay on the device for the whole
 * weight (n bytes and 8 bytes a block): {@link #finish} double-quantizes both absmax sets there
 * (the offset's exact sum on the device, its one rounding on the host), decodes the scales and
 * measures what survived, so the survival figures cost no extra pass over the host.
 *
 * <p>The figures are Nf4Requantizer's, summed in another order (per warp and tile, not element by
 * element), so they agree with the CPU's to about 1e-12 relative; the written bytes are identical.
 */
final class CudaRequantization implements Requantization {
    private final CudaBackend backend;
    private final CudaDevice device;
    private final TensorJob job;
    /** The rows' merge on the device: the factors, the base's decoded absmax, the upload and dequantization of W. */
    private final CudaTensorMerge merge;
    private final QuantState base;
    private final FloatFormat format;
    private final long numElements;
    private final int blocksize;
    private final long numBlocks;
    private final DeviceMemory packedX;
    private final DeviceMemory packedW;
    private final DeviceMemory absmaxX;
    private final DeviceMemory absmaxW;
    private final DeviceMemory sums;
    private boolean closed;

    CudaRequantization(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        this.backend = backend;
        this.device = device;
        this.job = job;
        this.base = ((Nf4Weight) job.out().source().quantized()).tensor().state();
        this.format = job.dstFormat();
        this.numElements = base.numElements();
        this.blocksize = base.blocksize();
        this.numBlocks = base.numBlocks();
        long packedBytes = Nf4Codec.packedBytes(numElements);
        if (packedBytes > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(job.out().name() + ": " + numElements + " elements are more than one weight loramerge requantizes");
        }
        this.merge = new CudaTensorMerge(backend, device, job);
        DeviceMemory[] m = new DeviceMemory[5];
        try {
            DevicePool pool = device.pool();
            m[0] = pool.take(packedBytes);
            m[1] = pool.take(packedBytes);
            m[2] = pool.take(numBlocks * Sizeof.FLOAT);
            m[3] = pool.take(numBlocks * Sizeof.FLOAT);
            m[4] = pool.take(3 * numBlocks * Sizeof.DOUBLE);
        } catch (RuntimeException e) {
            for (DeviceMemory d : m) {
                if (d != null) {
                    d.close();
                }
            }
            merge.close();
            throw e;
        }
        packedX = m[0];
        packedW = m[1];
        absmaxX = m[2];
        absmaxW = m[3];
        sums = m[4];
    }

    @Override
    public TensorSource.Form input() {
        return TensorSource.Form.STORED;
    }

    @Override
    public int blockElements() {
        return blocksize;
    }

    @Override
    public int workingBytesPerElement() {
        return format.sizeInBytes(); // a block's W and X are the worker's device buffers, sized by the output dtype
    }

    /** NF4 codes, two a byte: a range from an even element starts at byte firstElement / 2. */
    @Override
    public long codesOffset(long firstElement) {
        return firstElement / 2;
    }

    @Override
    public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer packed, BlockStats stats) throws Exception {
        DeviceWorker w = device.worker();
        int cols = job.cols();
        long first = row0 * cols;
        long count = (long) rowCount * cols;
        if (first % blocksize != 0 || (count % blocksize != 0 && first + count != numElements)) {
            throw new IllegalArgumentException(job.out().name() + ": rows [" + row0 + ", +" + rowCount + ") do not cover whole NF4 blocks");
        }
        long bytes = count * format.sizeInBytes();
        merge.load(w, row0, rowCount, packed);
        DeviceFactors f = merge.factors();
        w.mergeRoundExactly(f, format, format, row0, rowCount, cols, job.boundK());
        DeviceWorker.Counts counted = w.counters();
        long overflows = counted.overflows();
        long nans = counted.nans();
        long forHost = DeviceWorker.forHost(f, counted); // a folded tensor's undecided elements are all the host's
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY || forHost > 0) {
            long[] settled = settleOnHost(job, w, f, row0, rowCount, counted, forHost, bytes, stats);
            overflows = settled[0];
            nans = settled[1];
        } else {
            stats.addExactlyRounded(counted.ambiguous());
        }
        stats.add(0, overflows, nans);
        if (overflows > 0 || nans > 0) {
            throw nonFinite(w, first, count, bytes);
        }
        device.nf4().requant(w.stream(), format, w.output().pointer(), w.input().pointer(), w.wide().pointer(), first, count, blocksize,
                packedX.pointer(), packedW.pointer(), absmaxX.pointer(), absmaxW.pointer(), sums.pointer());
        long from = first / 2;
        int out = (int) (Nf4Codec.packedBytes(first + count) - from);
        byte[] codes = new byte[out];
        JCuda.cudaMemcpyAsync(w.hostIn().pointer(), packedX.at(from), out, cudaMemcpyKind.cudaMemcpyDeviceToHost, w.stream().runtime());
        w.synchronize();
        w.hostIn().buffer().get(codes);
        return ByteBuffer.wrap(codes);
    }

    /**
     * The host's part of a block the device could not settle alone: when more elements were
     * ambiguous than the kernel lists, the CPU engine merges the whole block and X goes up again;
     * otherwise the few elements the device left are recomputed exactly from W (the dequantized
     * block, copied down) into a copy of X, which goes up once. Returns the block's overflows and
     * NaNs after settling. Shared with {@link CudaByteRequantization}.
     */
    static long[] settleOnHost(TensorJob job, DeviceWorker w, DeviceFactors f, long row0, int rowCount, DeviceWorker.Counts counted, long forHost,
                               long bytes, BlockStats stats) throws Exception {
        FloatFormat format = job.dstFormat();
        ByteBuffer wHost = w.download(w.input(), bytes);
        ByteBuffer x = ByteBuffer.allocateDirect(Math.toIntExact(bytes)).order(ByteOrder.LITTLE_ENDIAN);
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY) {
            BlockStats s = new BlockStats();
            CpuMerge.mergeRows(job, row0, rowCount, wHost, x, s, null);
            stats.add(s.exactFallbacks(), 0, 0);
            stats.addExactlyRounded(s.exactlyRounded());
            x.position(0).limit(Math.toIntExact(bytes));
            Nf4Kernels.upload(w.stream(), w.output().pointer(), x);
            return new long[] {s.overflows(), s.nans()};
        }
        stats.addExactlyRounded(counted.ambiguous() - forHost);
        x.put(w.download(w.output(), bytes));
        ByteBuffer idx = w.forHostElements(f, forHost);
        long overflows = HostSettle.settle(job, row0, wHost, idx, (int) forHost, (e, bits) -> format.putBits(x, e, bits), stats);
        x.position(0).limit(Math.toIntExact(bytes));
        Nf4Kernels.upload(w.stream(), w.output().pointer(), x);
        // the kernels counted the ambiguous elements' overflows as they settled them; NaNs are among the others
        return new long[] {counted.overflows() + overflows, counted.nans()};
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
        Nf4Kernels k = device.nf4();
        int blocks = Math.toIntExact(numBlocks);
        long tiles = Nf4Kernels.tiles(numElements);
        try (CudaStream s = new CudaStream(); DeviceMemory out = device.pool().take(4 * tiles * Sizeof.DOUBLE)) {
            QuantState state;
            float[] absmax = null;
            DoubleQuant.Result dq = null;
            Requantizer.Change change;
            if (base.isDoubleQuant()) {
                try (DeviceMemory map = Nf4Kernels.uploadFloats(device.pool(), s, DynamicMap.signed());
                     DoubleQuantized x = doubleQuantize(s, absmaxX, map);
                     DoubleQuantized w = doubleQuantize(s, absmaxW, map)) {
                    k.measure(s, format, packedX.pointer(), packedW.pointer(), x.scales.pointer(), w.scales.pointer(), sums.pointer(),
                            numElements, blocksize, out.pointer());
                    change = sumTiles(s, out, tiles);
                    byte[] codes = new byte[blocks];
                    float[] nested = new float[(blocks + DoubleQuant.NESTED_BLOCKSIZE - 1) / DoubleQuant.NESTED_BLOCKSIZE];
                    JCuda.cudaMemcpy(Pointer.to(codes), x.codes.pointer(), blocks, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                    JCuda.cudaMemcpy(Pointer.to(nested), x.nested.pointer(), (long) nested.length * Sizeof.FLOAT,
                            cudaMemcpyKind.cudaMemcpyDeviceToHost);
                    dq = new DoubleQuant.Result(codes, nested, x.offset);
                    state = QuantState.of(blocksize, base.dtype(), base.shape(), new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, x.offset));
                }
            } else {
                k.measure(s, format, packedX.pointer(), packedW.pointer(), absmaxX.pointer(), absmaxW.pointer(), sums.pointer(), numElements,
                        blocksize, out.pointer());
                change = sumTiles(s, out, tiles);
                absmax = new float[blocks];
                JCuda.cudaMemcpy(Pointer.to(absmax), absmaxX.pointer(), (long) blocks * Sizeof.FLOAT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                state = QuantState.of(blocksize, base.dtype(), base.shape(), null);
            }
            List<ByteBuffer> tail = Nf4Tensor.tail(state, absmax, dq);
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
        DeviceMemory codes = device.pool().take(numBlocks);
        DeviceMemory nested = device.pool().take(nestedBlocks * Sizeof.FLOAT);
        DeviceMemory scales = device.pool().take(numBlocks * Sizeof.FLOAT);
        k.doubleQuant(s, absmax.pointer(), numBlocks, offset, map.pointer(), codes.pointer(), nested.pointer());
        k.decodeAbsmax(s, codes.pointer(), nested.pointer(), map.pointer(), offset, DoubleQuant.NESTED_BLOCKSIZE, numBlocks, scales.pointer());
        return new DoubleQuantized(offset, codes, nested, scales);
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        device.bindContext();
        packedX.close();
        packedW.close();
        absmaxX.close();
        absmaxW.close();
        sums.close();
        merge.close();
        backend.forget(this);
    }
}
