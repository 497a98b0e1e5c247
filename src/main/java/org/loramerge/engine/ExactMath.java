package org.loramerge.engine;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.ref.WeakReference;
import java.math.BigDecimal;
import java.math.MathContext;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.DoraSpec;

/**
 * The exact reference: merged values computed in decimal arithmetic without rounding (DoRA's
 * square root and division to 80 significant digits), then rounded once to the output format.
 * Elements whose fp64 value is too close to a rounding boundary to decide are settled by
 * {@link Rounder}: exactly in double-based expansion arithmetic when the merge is a plain sum of
 * products, in decimal arithmetic here otherwise.
 */
public final class ExactMath {
    /** Precision for DoRA's square root and quotient: far beyond any format's midpoint distance. */
    public static final MathContext DORA = new MathContext(80);

    private ExactMath() {
    }

    /** x rounded once to the nearest value of {@code f}, ties to even (returned as a double). */
    public static double round(BigDecimal x, FloatFormat f) {
        double xd = x.doubleValue(); // correctly rounded to double
        double y = f.round(xd);
        if (Double.isInfinite(xd) || xd == 0) {
            return y;
        }
        double below = f.round(Math.nextDown(xd));
        double above = f.round(Math.nextUp(xd));
        if (below == above) {
            return y; // xd is not a midpoint of f, so x rounds as xd does
        }
        // xd is a midpoint of f: decide by the exact value
        int c = x.compareTo(new BigDecimal(xd));
        return c > 0 ? above : c < 0 ? below : y;
    }

    /**
     * Rounds merged elements exactly, the cheap way when it can: a plain merge (no DoRA) is an
     * exact sum of doubles for F32/F16/BF16 inputs, decided by {@link Expansion}; so is a dense
     * combination's W + Δ, Δ being the float64 delta {@link DenseCombination} defines (two
     * doubles). DoRA's square root and quotient, and inputs outside the range where products are
     * exact, take the decimal path ({@link #merged}, {@link #round(BigDecimal, FloatFormat)}). One
     * per thread.
     */
    public static final class Rounder {
        private final Expansion x = new Expansion();
        private boolean decimal;
        /** The dense combination whose Δ of one row is kept for the next element of that row (weakly: a finished tensor's factors go). */
        private WeakReference<DenseCombination> deltaOf = new WeakReference<>(null);
        private long deltaRow = -1;
        private double[] delta = new double[0];

        /** Element (row, col) of {@code job}, whose source row is {@code sourceRow}, rounded once to {@code out}. */
        public double round(TensorJob job, double[] sourceRow, long row, int col, FloatFormat out) {
            decimal = false;
            if (job.doraAxis() == null && sum(job, sourceRow[col], row, col)) {
                return x.roundTo(out);
            }
            decimal = true;
            return ExactMath.round(merged(job, sourceRow, row, col), out);
        }

        /** True when the last {@link #round} needed decimal arithmetic (the exact fallback the report counts). */
        public boolean lastWasDecimal() {
            return decimal;
        }

        /**
         * W + Σ s·U_i·V_j, or a dense combination's W + Δ, into the expansion; false when the
         * doubles cannot hold it exactly.
         */
        private boolean sum(TensorJob job, double w, long row, int col) {
            x.clear();
            x.add(w);
            if (job.dense() != null) {
                x.add(denseDelta(job.dense(), row, col)); // Δ is a float64 by definition: W + Δ is exact as two addends
                return x.isExact();
            }
            for (LowRankTerm t : job.terms()) {
                int i = t.localRow(row);
                if (i < 0) {
                    continue;
                }
                int r = t.rank();
                int n = t.cols();
                double[] u = t.u();
                double[] vt = t.vt();
                double s = t.scale();
                for (int k = 0; k < r; k++) {
                    x.addScaledProduct(s, u[i * r + k], vt[k * n + col]);
                }
            }
            return x.isExact();
        }

        /** Δ of element (row, col), from the row's Δ ({@link DenseCombination#deltaRow}: ties are ranked along the row). */
        private double denseDelta(DenseCombination dense, long row, int col) {
            if (dense != deltaOf.get() || row != deltaRow) {
                if (delta.length < dense.cols()) {
                    delta = new double[dense.cols()];
                }
                dense.deltaRow(row, delta);
                deltaOf = new WeakReference<>(dense);
                deltaRow = row;
            }
            return delta[col];
        }
    }

    /**
     * The exact W + Σ s·U_i·V_j for element (row, col) of a job whose source value there is {@code w};
     * for a dense combination, W + Δ with Δ its float64 delta ({@link DenseCombination}).
     */
    public static BigDecimal plain(TensorJob job, double w, long row, int col) {
        BigDecimal x = new BigDecimal(w);
        if (job.dense() != null) {
            return x.add(new BigDecimal(job.dense().deltaAt(row, col))); // W + Δ, Δ defined in float64
        }
        for (LowRankTerm t : job.terms()) {
            int i = t.localRow(row);
            if (i < 0) {
                continue;
            }
            int r = t.rank();
            int n = t.cols();
            double[] u = t.u();
            double[] vt = t.vt();
            BigDecimal dot = BigDecimal.ZERO;
            for (int k = 0; k < r; k++) {
                double a = u[i * r + k];
                double b = vt[k * n + col];
                if (a != 0 && b != 0) {
                    dot = dot.add(new BigDecimal(a).multiply(new BigDecimal(b)));
                }
            }
            x = x.add(new BigDecimal(t.scale()).multiply(dot));
        }
        return x;
    }

    /**
     * The exact merged value of element (row, col): plain, or DoRA's (m / ‖V‖)·V with the norm over
     * the row ({@code sourceRow} holds it) or over the column (read from the job's source).
     */
    public static BigDecimal merged(TensorJob job, double[] sourceRow, long row, int col) {
        BigDecimal v = plain(job, sourceRow[col], row, col);
        if (job.doraAxis() == null) {
            return v;
        }
        return v.multiply(doraFactor(job, sourceRow, row, col), DORA);
    }

    private static BigDecimal doraFactor(TensorJob job, double[] sourceRow, long row, int col) {
        boolean byRow = job.doraAxis() == DoraSpec.Axis.ROW;
        int index = byRow ? Math.toIntExact(row) : col;
        BigDecimal cached = job.exactFactors().get(index);
        if (cached != null) {
            return cached;
        }
        BigDecimal sumSq = BigDecimal.ZERO;
        if (byRow) {
            for (int j = 0; j < job.cols(); j++) {
                BigDecimal v = plain(job, sourceRow[j], row, j);
                sumSq = sumSq.add(v.multiply(v));
            }
        } else {
            try {
                for (long i = 0; i < job.rows(); i++) {
                    double[] r = job.readSourceRow(i);
                    BigDecimal v = plain(job, r[col], i, col);
                    sumSq = sumSq.add(v.multiply(v));
                }
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
        BigDecimal m = new BigDecimal(job.magnitude()[index]);
        BigDecimal factor = sumSq.signum() == 0 ? null : m.divide(sumSq.sqrt(DORA), DORA);
        if (factor == null) {
            throw new ArithmeticException("DoRA norm of " + (byRow ? "row " : "column ") + index + " of "
                    + job.out().name() + " is zero: the merged weight is undefined (PEFT would write NaN)");
        }
        job.exactFactors().put(index, factor);
        return factor;
    }
}
