package org.loramerge.engine;

import java.util.Arrays;
import org.loramerge.format.FloatFormat;

/**
 * An exact sum of doubles held as a nonoverlapping expansion (Shewchuk, "Adaptive Precision
 * Floating-Point Arithmetic and Fast Robust Geometric Predicates", 1997): components in increasing
 * magnitude whose exact sum is the value, kept exact by error-free transformations (TwoSum, and
 * TwoProduct by fused multiply-add). It decides the rounding of a merged element whose fp64 value
 * is too close to a rounding boundary for the error bound, without decimal arithmetic: for
 * F32/F16/BF16 inputs every product of a factor pair is exact in double, so W + Σ s·U·V is an exact
 * sum of a few doubles per rank step, and the sign of (sum − midpoint) settles the rounding.
 *
 * <p>Exactness needs every product and its error term to be a normal double. {@link #isExact()}
 * turns false when an input or an intermediate leaves that range (tiny below 2^-900, huge above
 * 2^900, or not finite); the caller then takes the decimal path ({@link ExactMath}). kernels/exact.cuh
 * does the same on the device, step for step.
 *
 * <p>Not thread-safe: one instance per thread, reused across elements with {@link #clear()}.
 */
public final class Expansion {
    /** Below this magnitude a product's error term may be subnormal, and so not exact. */
    static final double TINY = 0x1p-900;
    /** Above this magnitude a product or sum may overflow. */
    static final double HUGE = 0x1p900;

    private double[] c = new double[16];
    private int n;
    private boolean exact = true;

    public void clear() {
        n = 0;
        exact = true;
    }

    /** False once an addend or product left the range in which the arithmetic is exact. */
    public boolean isExact() {
        return exact;
    }

    /** Adds {@code x} exactly (grow-expansion with zero elimination). */
    public void add(double x) {
        if (x == 0) {
            return;
        }
        if (!(Math.abs(x) < HUGE)) {
            exact = false;
            return;
        }
        double q = x;
        int m = 0;
        for (int i = 0; i < n; i++) {
            double e = c[i];
            double s = q + e;
            double bv = s - q;
            double err = (q - (s - bv)) + (e - bv); // TwoSum: s + err = q + e exactly
            q = s;
            if (err != 0) {
                c[m++] = err;
            }
        }
        if (q != 0) {
            if (m == c.length) {
                c = Arrays.copyOf(c, 2 * c.length);
            }
            c[m++] = q;
        }
        n = m;
    }

    /** Adds {@code s·a·b} exactly: two TwoProducts, four exact addends. */
    public void addScaledProduct(double s, double a, double b) {
        if (a == 0 || b == 0 || s == 0) {
            return;
        }
        double p = a * b;
        double pe = Math.fma(a, b, -p);
        double q = s * p;
        double qe = Math.fma(s, p, -q);
        double r = s * pe;
        double re = Math.fma(s, pe, -r);
        if (!inRange(p) || !inRange(q) || pe != 0 && !inRange(r)) {
            exact = false;
            return;
        }
        add(q);
        add(qe);
        add(r);
        add(re);
    }

    private static boolean inRange(double x) {
        double m = Math.abs(x);
        return m > TINY && m < HUGE;
    }

    /** The value to about double precision: the components summed from the largest down. */
    public double estimate() {
        double s = 0;
        for (int i = n - 1; i >= 0; i--) {
            s += c[i];
        }
        return s;
    }

    /** The sign of (value − m), exactly: -1, 0 or 1. */
    public int compareTo(double m) {
        // value − m is exact as an expansion; its largest component, after compression, gives the sign
        double[] saved = Arrays.copyOf(c, n);
        int savedN = n;
        add(-m);
        int sign = signOfLargest();
        c = saved.length >= 16 ? saved : Arrays.copyOf(saved, 16);
        n = savedN;
        return sign;
    }

    /**
     * The sign of the value: that of its largest-magnitude component, since the components do not
     * overlap and so the largest one outweighs the sum of all the others.
     */
    private int signOfLargest() {
        return n == 0 ? 0 : (int) Math.signum(c[n - 1]);
    }

    /**
     * The value rounded once to {@code f}, to nearest with ties to even, as a double (±Inf past the
     * largest finite value, +0 for an exact zero). Only meaningful while {@link #isExact()}.
     */
    public double roundTo(FloatFormat f) {
        if (n == 0) {
            return 0.0;
        }
        double y = f.round(estimate());
        // the estimate is within a double's rounding of the value, so y is the answer or a neighbour
        for (int step = 0; step < 4; step++) {
            if (y != Double.POSITIVE_INFINITY) {
                double up = f.nextUp(y);
                int above = compareTo(f.midpoint(y, up));
                if (above > 0) {
                    y = up;
                    continue;
                }
                if (above == 0) {
                    return f.evenOf(y, up);
                }
            }
            if (y != Double.NEGATIVE_INFINITY) {
                double down = f.nextDown(y);
                int below = compareTo(f.midpoint(down, y));
                if (below < 0) {
                    y = down;
                    continue;
                }
                if (below == 0) {
                    return f.evenOf(down, y);
                }
            }
            return y;
        }
        throw new IllegalStateException("the rounding of an exact sum did not settle near its estimate " + estimate());
    }
}
