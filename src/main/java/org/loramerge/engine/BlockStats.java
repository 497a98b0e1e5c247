package org.loramerge.engine;

/**
 * What a merge of some rows found: elements whose fp64 value lay too close to a rounding boundary
 * for the error bound, decided in exact expansion arithmetic ({@link #exactlyRounded}) or, as the
 * last resort, in decimal arithmetic ({@link #exactFallbacks}); finite values that overflowed to
 * infinity in the output dtype; and NaN results from finite inputs. Safe to add to from several
 * threads. It also carries the merge's {@link Stages}, where the engine adds the time of its own
 * stages.
 */
public final class BlockStats {
    private final Stages stages;
    private long exactlyRounded;
    private long exactFallbacks;
    private long overflows;
    private long nans;

    /** A record whose engine stages are not kept. */
    public BlockStats() {
        this(Stages.NONE);
    }

    /** A record whose engine stages go to {@code stages}. */
    public BlockStats(Stages stages) {
        this.stages = stages;
    }

    /** Where the engine adds the time of its stages. */
    public Stages stages() {
        return stages;
    }

    public synchronized void add(long exactFallbacks, long overflows, long nans) {
        this.exactFallbacks += exactFallbacks;
        this.overflows += overflows;
        this.nans += nans;
    }

    /** Counts elements the bound could not settle that exact expansion arithmetic did. */
    public synchronized void addExactlyRounded(long count) {
        this.exactlyRounded += count;
    }

    public synchronized void add(BlockStats o) {
        add(o.exactFallbacks(), o.overflows(), o.nans());
        addExactlyRounded(o.exactlyRounded());
    }

    public synchronized long exactlyRounded() {
        return exactlyRounded;
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
