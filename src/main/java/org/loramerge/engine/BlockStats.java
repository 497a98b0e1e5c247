package org.loramerge.engine;

/**
 * What a merge of some rows found: elements whose fp64 value lay too close to a rounding boundary
 * and were recomputed exactly, finite values that overflowed to infinity in the output dtype, and
 * NaN results from finite inputs. Optionally it also records each element's change (see
 * {@link #deltas()}).
 */
public final class BlockStats {
    private long exactFallbacks;
    private long overflows;
    private long nans;
    private final double[] deltas;

    public BlockStats() {
        this(null);
    }

    /** Stats of a block whose per-element changes are recorded into {@code deltas} (see {@link #deltas()}). */
    public BlockStats(double[] deltas) {
        this.deltas = deltas;
    }

    /**
     * When not null, the CPU engine writes here each merged element's change {@code v − w}, with
     * v the fp64 merged value before rounding and w the base value (0 where the base value is not
     * finite or a token row replaces the row), element (i, j) of the block at {@code i·cols + j}:
     * the ΔW of NF4 requantization's survival report. Only the CPU engine records; NF4 tensors
     * always run on it.
     */
    public double[] deltas() {
        return deltas;
    }

    public synchronized void add(long exactFallbacks, long overflows, long nans) {
        this.exactFallbacks += exactFallbacks;
        this.overflows += overflows;
        this.nans += nans;
    }

    public synchronized void add(BlockStats o) {
        add(o.exactFallbacks, o.overflows, o.nans);
    }

    public synchronized long exactFallbacks() {
        return exactFallbacks;
    }

    public synchronized long overflows() {
        return overflows;
    }

    public synchronized long nans() {
        return nans;
    }
}
