package org.loramerge.quant;

import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.List;
import org.loramerge.format.FloatFormat;

/**
 * Requantizes one merged weight to NF4 while the merge streams it (what {@code merge --to nf4}
 * writes), and measures how much of the adapter's change the requantization keeps.
 *
 * <p>Per range of elements it takes two inputs, both in the base quant state's dtype D (bf16
 * usually): the merged values {@code X = round_D(W + ΔW)} (the exact sum, rounded once) and the
 * dequantized base values {@code W}. It quantizes X with the base's blocksize, and with double
 * quantization when the base had it ({@link Nf4Encoder#encodeBlocks}, {@link DoubleQuant}): those
 * codes and scales are the output. It quantizes W the same way, for the measurement only:
 * requantizing moves W even without an adapter (each block's absmax becomes its dequantized,
 * D-rounded maximum, and the double-quantization offset is recomputed), and measuring against
 * {@code Q(W)} instead of the stored base keeps that move out of the figure:
 *
 * <pre>
 * survival = ‖D‖ / ‖ΔW‖,  D = deq(Q(X)) − deq(Q(W))      share of codes changed = #{i : Q(X)_i ≠ Q(W)_i} / n
 * aligned  = ⟨D̃, ΔW⟩ / ‖ΔW‖²                           (the part of ΔW the 4-bit change carries along ΔW)
 * </pre>
 *
 * with deq as bitsandbytes dequantizes ({@code round_D(fl32(NF4[code] · absmax'))}, absmax'
 * double-dequantized when nested), ΔW per element from the merge engine (the fp64 merged value
 * minus W, as the CPU engine computes it beside the rounded value) and all sums in double.
 *
 * <p>Why two figures: survival compares sizes only. A weak change (smaller than half an NF4 step,
 * about 0.05 · absmax) leaves almost every code where it was, but the few codes that do move jump a
 * whole step, so ‖D‖ can approach ‖ΔW‖ while the 4-bit model barely follows the adapter. Aligned
 * measures what points the way ΔW does: 1 when the requantized change carries ΔW on average, near 0
 * when it is rounded away or is noise. It needs each element's ΔW, which is not kept: per block the
 * sums {@code Σ NF4[c]·ΔW} of both code sets are, and the block's scale multiplies them once it is
 * known, so D̃ is D before bitsandbytes' roundings of the product to fp32 and D (a relative
 * difference below 2^-8 per element).
 *
 * <p>Ranges must start on an NF4 block boundary and end on one or at the end of the weight, so a
 * block never straddles two ranges: any number of threads may encode disjoint ranges at once
 * (the pipeline cuts its row blocks that way). After the last range, {@link #finish} computes the
 * double quantization, {@link #tail} gives the bytes of the tensors after {@code P.weight}, and
 * {@link #measure} the survival sums, by chunks that threads may share.
 *
 * <p>Memory: the packed codes of Q(X) and Q(W) are held for the whole weight, n/2 bytes each for
 * n elements (together half the size of the weight in bf16), plus per block two absmax floats and
 * three double sums (0.5 byte per element at blocksize 64). With double quantization a block's dequantized scale depends on the mean absmax of the
 * whole weight, known only after its last block, and the survival figure needs the dequantized
 * values of both, so the codes must wait that long.
 */
public final class Nf4Requantizer implements Requantizer {
    /** Blocks per {@link #measure} chunk: a fixed partition, so the sums do not depend on the thread count. */
    static final int CHUNK_BLOCKS = 1 << 14;

    private final String weightName;
    private final Path path;
    private final QuantState base;
    private final FloatFormat format;
    private final long numElements;
    private final int blocksize;
    private final int numBlocks;
    private final byte[] packed;
    private final byte[] packedBase;
    private final float[] absmax;
    private final float[] absmaxBase;
    /** Per block: Σ NF4[Q(X)_i]·ΔW_i, Σ NF4[Q(W)_i]·ΔW_i, Σ ΔW_i². */
    private final double[] dotX;
    private final double[] dotW;
    private final double[] deltaSq;
    private QuantState outputState;
    private DoubleQuant.Result doubleQuantized;
    private float[] scale;
    private float[] scaleBase;

    /**
     * @param weightName the weight's name ({@code P.weight}), for messages
     * @param path       the base file it comes from, for messages (may be null)
     * @param base       the base weight's quant state: blocksize, dtype, shape and whether it is double-quantized
     */
    public Nf4Requantizer(String weightName, Path path, QuantState base) {
        this.weightName = weightName;
        this.path = path;
        this.base = base;
        this.format = FloatFormat.of(base.dtype());
        this.numElements = base.numElements();
        this.blocksize = base.blocksize();
        long bytes = Nf4Codec.packedBytes(numElements);
        if (bytes > Integer.MAX_VALUE - 8 || base.numBlocks() > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(weightName + ": " + numElements + " elements are more than one weight loramerge requantizes ("
                    + 2L * (Integer.MAX_VALUE - 8) + ")");
        }
        this.numBlocks = (int) base.numBlocks();
        this.packed = new byte[(int) bytes];
        this.packedBase = new byte[(int) bytes];
        this.absmax = new float[numBlocks];
        this.absmaxBase = new float[numBlocks];
        this.dotX = new double[numBlocks];
        this.dotW = new double[numBlocks];
        this.deltaSq = new double[numBlocks];
    }

    public long numElements() {
        return numElements;
    }

    public int blocksize() {
        return blocksize;
    }

    @Override
    public int blockElements() {
        return blocksize;
    }

    /**
     * Quantizes elements {@code [firstElement, firstElement + count)}: {@code merged} holds X and
     * {@code base} holds W there, in the quant state's dtype, and {@code delta[i]} the change ΔW of
     * each, element {@code firstElement} at index 0.
     *
     * @throws QuantException NON_FINITE when a merged value is NaN or infinite
     */
    @Override
    public void encode(long firstElement, int count, ByteBuffer merged, ByteBuffer base, double[] delta) throws QuantException {
        FourBitCode book = this.base.code();
        Nf4Encoder.encodeBlocks(book, merged, format, numElements, blocksize, firstElement, count, packed, absmax, path, weightName);
        Nf4Encoder.encodeBlocks(book, base, format, numElements, blocksize, firstElement, count, packedBase, absmaxBase, path, weightName);
        for (int start = 0; start < count; start += blocksize) {
            int block = (int) ((firstElement + start) / blocksize);
            int len = Math.min(blocksize, count - start);
            double x = 0;
            double w = 0;
            double d2 = 0;
            for (int i = start; i < start + len; i++) {
                long e = firstElement + i;
                double d = delta[i];
                x += book.value(Nf4Codec.codeAt(packed[(int) (e >>> 1)], e)) * d;
                w += book.value(Nf4Codec.codeAt(packedBase[(int) (e >>> 1)], e)) * d;
                d2 += d * d;
            }
            dotX[block] = x;
            dotW[block] = w;
            deltaSq[block] = d2;
        }
    }

    /** The packed codes of Q(X) for an encoded range, to be written: bytes {@code [firstElement/2, ceil((firstElement+count)/2))}. */
    @Override
    public ByteBuffer codes(long firstElement, int count) {
        int from = (int) (firstElement / 2);
        int to = (int) Nf4Codec.packedBytes(firstElement + count);
        return ByteBuffer.wrap(packed, from, to - from).slice();
    }

    /** Two codes a byte: a range from an even element starts at byte firstElement / 2. */
    @Override
    public long codesOffset(long firstElement) {
        return firstElement / 2;
    }

    /** After every range is encoded: the double quantization of both absmax sets and the dequantized scales. */
    @Override
    public void finish() throws QuantException {
        if (base.isDoubleQuant()) {
            DoubleQuant.Result dq = DoubleQuant.quantize(absmax, numBlocks);
            DoubleQuant.requireFiniteMergedOffset(dq.offset(), numBlocks, path, weightName);
            doubleQuantized = dq;
            DoubleQuant.Result dqBase = DoubleQuant.quantize(absmaxBase, numBlocks);
            // the base's requantization only measures what survives of the change: an infinite offset would make that NaN
            DoubleQuant.requireFiniteMergedOffset(dqBase.offset(), numBlocks, path, weightName);
            outputState = base.withNested(new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, dq.offset()));
            scale = decode(dq);
            scaleBase = decode(dqBase);
        } else {
            outputState = base.withNested(null);
            scale = absmax;
            scaleBase = absmaxBase;
        }
    }

    private float[] decode(DoubleQuant.Result dq) {
        float[] map = DynamicMap.signed(); // the nested_quant_map loramerge writes
        float[] out = new float[numBlocks];
        for (int i = 0; i < numBlocks; i++) {
            out[i] = DoubleQuant.decode(dq.codes()[i], dq.nestedAbsmax()[i / DoubleQuant.NESTED_BLOCKSIZE], dq.offset(), map);
        }
        return out;
    }

    /** The output quant state (its offset is the mean absmax of the merged weight); after {@link #finish}. */
    public QuantState outputState() {
        checkFinished();
        return outputState;
    }

    /** The tensors after {@code P.weight} in {@link Nf4Tensor#layout} order, the quant state as bitsandbytes writes it. */
    @Override
    public List<ByteBuffer> tail() {
        checkFinished();
        return Nf4Tensor.tail(outputState, absmax, doubleQuantized);
    }

    /** How many chunks {@link #measure} splits the weight into. */
    @Override
    public int chunks() {
        return (numBlocks + CHUNK_BLOCKS - 1) / CHUNK_BLOCKS;
    }

    /**
     * Chunk {@code chunk}'s contribution (see {@link Change}). Add the chunks in order for a result
     * that does not depend on how many threads computed them.
     */
    @Override
    public Change measure(int chunk) {
        checkFinished();
        long first = (long) chunk * CHUNK_BLOCKS * blocksize;
        long end = Math.min(numElements, first + (long) CHUNK_BLOCKS * blocksize);
        long changed = 0;
        double sum = 0;
        double dot = 0;
        double d2 = 0;
        int firstBlock = chunk * CHUNK_BLOCKS;
        int endBlock = (int) Math.min(numBlocks, (long) firstBlock + CHUNK_BLOCKS);
        for (int b = firstBlock; b < endBlock; b++) {
            dot += (double) scale[b] * dotX[b] - (double) scaleBase[b] * dotW[b];
            d2 += deltaSq[b];
        }
        for (long e = first; e < end; e++) {
            int block = (int) (e / blocksize);
            int byteIndex = (int) (e >>> 1);
            int c = Nf4Codec.codeAt(packed[byteIndex], e);
            int c0 = Nf4Codec.codeAt(packedBase[byteIndex], e);
            double x = format.round(Nf4Codec.dequantize(base.code(), c, scale[block]));
            double w = format.round(Nf4Codec.dequantize(base.code(), c0, scaleBase[block]));
            if (c != c0) {
                changed++;
            }
            double d = x - w;
            sum += d * d;
        }
        return new Change(changed, sum, dot, d2);
    }

    private void checkFinished() {
        if (outputState == null) {
            throw new IllegalStateException(weightName + ": requantizer not finished");
        }
    }
}
