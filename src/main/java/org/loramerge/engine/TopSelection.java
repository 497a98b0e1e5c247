package org.loramerge.engine;

/**
 * Which elements of one adapter's update of a tensor are its top D by magnitude (docs/FORMATS.md
 * §8): the k = floor(D·n) largest |x|, where equal magnitudes straddle the cut those with the
 * lower row-major index. Found without sorting, by a radix select on the bits of |x| (for a
 * non-negative double, its bits order as its value): each pass histograms one digit of the
 * elements that share the digits found so far, until the cut is known. Four passes at most
 * (digits of 16, 16, 16 and 15 bits); a pass that lands the cut on a bucket boundary ends it
 * early; a cut inside a run of equal keys adds a pass that counts those keys per row.
 *
 * <p>Every engine runs the same passes over the same values, so the selection is exact and the
 * same everywhere; histograms are integer counts, so the order of adding blocks is free.
 */
public final class TopSelection {
    private static final int[] SHIFT = {47, 31, 15, 0};
    private static final int[] BITS = {16, 16, 16, 15};

    private final long elements;
    private final long rows;
    private final long keep;
    private int pass;
    private long prefix;
    private long needed;
    private boolean done;
    private boolean countingTies;
    private long keepFrom;
    private long tieKey = -1;
    private long tiesKept;
    private long[] tieOffsets;
    /** The pass being summed: a histogram, or per-row tie counts. */
    private long[] sums;

    /** The top {@code density} of {@code elements} values over {@code rows} rows; density 1 keeps all. */
    public TopSelection(long elements, long rows, double density) {
        this.elements = elements;
        this.rows = rows;
        this.keep = density >= 1 ? elements : (long) (density * elements); // Python's int(density * numel), as PEFT
        if (keep >= elements) {
            keepFrom = 0;
            done = true;
        } else if (keep == 0) {
            keepFrom = Long.MAX_VALUE;
            done = true;
        } else {
            needed = keep;
        }
    }

    /** How many elements are kept. */
    public long kept() {
        return keep;
    }

    /** True once the cut is known. */
    public boolean done() {
        return done;
    }

    /** True when the current pass counts the elements equal to the cut per row (else it histograms a digit). */
    public boolean countingTies() {
        return countingTies;
    }

    /** The bit position of the current pass's digit. */
    public int shift() {
        return SHIFT[pass];
    }

    /** The current pass's digit width. */
    public int bits() {
        return BITS[pass];
    }

    /** True when {@code key} shares the digits found so far (so the current pass counts it). */
    public boolean inPrefix(long key) {
        return (key >>> (SHIFT[pass] + BITS[pass])) == prefix;
    }

    /** The digit of {@code key} the current pass counts. */
    public int digit(long key) {
        return (int) ((key >>> SHIFT[pass]) & ((1 << BITS[pass]) - 1));
    }

    /** The key equal to the cut, counted per row in a tie pass. */
    public long tieKey() {
        return tieKey;
    }

    /** A block's counts: a histogram of {@code 1 << bits()} buckets, or per-row counts from row {@code row0}. */
    public synchronized void add(long row0, long[] counts) {
        if (countingTies) {
            if (sums == null) {
                sums = new long[Math.toIntExact(rows)];
            }
            System.arraycopy(counts, 0, sums, (int) row0, counts.length);
            return;
        }
        if (sums == null) {
            sums = new long[1 << BITS[pass]];
        }
        for (int d = 0; d < counts.length; d++) {
            sums[d] += counts[d];
        }
    }

    /** Ends a pass once every block's counts were added: narrows to the cut, or sets the tie ranks. */
    public synchronized void finishPass() {
        long[] counts = sums;
        sums = null;
        if (countingTies) {
            tieOffsets = new long[counts.length + 1];
            for (int r = 0; r < counts.length; r++) {
                tieOffsets[r + 1] = tieOffsets[r] + counts[r];
            }
            countingTies = false;
            done = true;
            return;
        }
        if (counts == null) {
            counts = new long[1 << BITS[pass]];
        }
        long above = 0;
        for (int d = counts.length - 1; d >= 0; d--) {
            if (above + counts[d] < needed) {
                above += counts[d];
                continue;
            }
            long from = (prefix << BITS[pass]) | d;
            if (above + counts[d] == needed) {
                keepFrom = from << SHIFT[pass]; // all of bucket d and everything above it
                done = true;
            } else if (SHIFT[pass] == 0) {
                // the cut falls inside a run of equal keys: keep the first of them by index
                tieKey = from;
                tiesKept = needed - above;
                keepFrom = from + 1;
                countingTies = true;
            } else {
                needed -= above;
                prefix = from;
                pass++;
            }
            return;
        }
        throw new IllegalStateException("the selection's counts add up to fewer than the " + keep + " elements to keep of " + elements);
    }

    /**
     * Whether the element with magnitude bits {@code key} is kept; {@code tieRank} is its rank among
     * the elements equal to {@link #tieKey()} in row-major order (see {@link #tieOffset}).
     */
    public boolean keeps(long key, long tieRank) {
        return key >= keepFrom || key == tieKey && tieRank < tiesKept;
    }

    /** The cut as magnitude bits: keys at or above it are kept (with the tie rule of {@link #keeps}). */
    public long keepFrom() {
        return keepFrom;
    }

    /** The prefix of the digits found so far, which the current pass counts within. */
    public long prefix() {
        return prefix;
    }

    /** True when a row's elements need their tie ranks ({@link #keeps}). */
    public boolean hasPartialTies() {
        return tieKey >= 0;
    }

    /** The number of elements equal to the cut in the rows before {@code row}. */
    public long tieOffset(long row) {
        return tieOffsets[(int) row];
    }

    /** The magnitude bits of x: |x| as a double's raw bits, which order as |x| does. */
    public static long key(double x) {
        return Double.doubleToRawLongBits(x) & Long.MAX_VALUE;
    }
}
