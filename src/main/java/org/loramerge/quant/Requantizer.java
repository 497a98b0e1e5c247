package org.loramerge.quant;

import java.nio.ByteBuffer;
import java.util.List;

/**
 * Requantizes one merged weight into a {@link QuantizedOutput} while the merge streams it, and
 * measures how much of the adapter's change survives. Ranges start on a multiple of
 * {@link #blockElements()} and end on one or at the end of the weight, so a quantization block
 * never straddles two ranges and any number of threads may encode disjoint ranges at once.
 * After the last range, {@link #finish} settles the scales, {@link #tail} gives the bytes of the
 * group's tensors after the codes, and {@link #measure} the survival sums by chunks.
 */
public interface Requantizer {
    /**
     * The fewest rows of {@code cols} elements, row-major, that fill whole quantization blocks of
     * {@code blockElements}: {@code blockElements / gcd(cols, blockElements)}. Every row block a
     * requantizer takes is a multiple of it.
     */
    static long rowsOfWholeBlocks(long cols, long blockElements) {
        long a = cols;
        long b = blockElements;
        while (b != 0) {
            long t = a % b;
            a = b;
            b = t;
        }
        return blockElements / a;
    }

    /**
     * What a chunk of the weight contributes to the survival figures: codes changed, Σ D², Σ D·ΔW
     * and Σ ΔW², with D = deq(Q(W + ΔW)) − deq(Q(W)).
     */
    record Change(long codesChanged, double sumSq, double dot, double deltaSq) {
        public static final Change NONE = new Change(0, 0, 0, 0);

        public Change plus(Change o) {
            return new Change(codesChanged + o.codesChanged, sumSq + o.sumSq, dot + o.dot, deltaSq + o.deltaSq);
        }
    }

    int blockElements();

    /**
     * Quantizes elements {@code [firstElement, firstElement + count)}: {@code merged} holds the
     * merged values X and {@code base} the base values W there, in the weight's dtype, and
     * {@code delta[i]} each element's change ΔW (element {@code firstElement} at index 0).
     *
     * @throws QuantException when a merged value cannot be quantized (NaN, infinity)
     */
    void encode(long firstElement, int count, ByteBuffer merged, ByteBuffer base, double[] delta) throws QuantException;

    /** The output codes of an encoded range, to be written at {@link #codesOffset}. */
    ByteBuffer codes(long firstElement, int count);

    /** Where, in the codes tensor, the codes of a range from {@code firstElement} (a block boundary) start. */
    long codesOffset(long firstElement);

    /**
     * After every range is encoded: the scales of the whole weight.
     *
     * @throws QuantException when the weight has no scales the format can store (a double quantization offset past fp32)
     */
    void finish() throws QuantException;

    /** The bytes of the group's tensors after the codes, in {@link QuantizedOutput#entries} order; after {@link #finish}. */
    List<ByteBuffer> tail();

    /** How many chunks {@link #measure} splits the weight into. */
    int chunks();

    /** Chunk {@code chunk}'s survival sums; add the chunks in order for sums that do not depend on the thread count. */
    Change measure(int chunk);
}
