package org.loramerge.linalg;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ForkJoinPool;

/**
 * Eigenvalues of a real symmetric matrix: Householder reduction to a symmetric tridiagonal T with
 * the same eigenvalues (Golub–Van Loan §8.3.1), then bisection on Sturm counts for the eigenvalues
 * asked for (§8.4.1): the number of negative pivots of the LDLᵀ factorization of T − x·I is the
 * number of eigenvalues below x. Each eigenvalue is found to an absolute error of a few units of
 * roundoff times ‖T‖, which is what {@code extract --check-optimal} needs of the Gram matrix of ΔW:
 * the exact Eckart–Young optimum to compare the randomized SVD with.
 */
public final class SymmetricEigen {
    private final double[] d;
    private final double[] e;
    private final double pivmin;
    private final double lower;
    private final double upper;

    private SymmetricEigen(double[] d, double[] e) {
        this.d = d;
        this.e = e;
        int n = d.length;
        double maxE2 = 0;
        double lo = Double.POSITIVE_INFINITY;
        double hi = Double.NEGATIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            double r = (i > 0 ? Math.abs(e[i - 1]) : 0) + (i < n - 1 ? Math.abs(e[i]) : 0);
            lo = Math.min(lo, d[i] - r); // Gershgorin discs hold every eigenvalue
            hi = Math.max(hi, d[i] + r);
            if (i < n - 1) {
                maxE2 = Math.max(maxE2, e[i] * e[i]);
            }
        }
        this.pivmin = Double.MIN_NORMAL * Math.max(1, maxE2);
        double pad = 0x1p-50 * Math.max(Math.abs(lo), Math.abs(hi)) + pivmin;
        this.lower = n == 0 ? 0 : lo - pad;
        this.upper = n == 0 ? 0 : hi + pad;
    }

    /** Reduces the symmetric {@code g} (only its values are read; it is not changed) on {@code threads} threads. */
    public static SymmetricEigen of(Matrix g, int threads) {
        int n = g.rows();
        if (g.cols() != n) {
            throw new IllegalArgumentException("not square: " + g.shape());
        }
        double[] a = g.data().clone();
        double[] d = new double[n];
        double[] e = new double[Math.max(0, n - 1)];
        double[] v = new double[n];
        double[] p = new double[n];
        ForkJoinPool pool = threads > 1 ? new ForkJoinPool(threads) : null;
        try {
            for (int k = 0; k < n - 2; k++) {
                int s = k + 1; // the trailing block is rows and columns [s, n)
                double scale = 0;
                for (int i = s; i < n; i++) {
                    scale = Math.max(scale, Math.abs(a[k * n + i]));
                }
                d[k] = a[k * n + k];
                if (scale == 0) {
                    e[k] = 0;
                    continue;
                }
                double sum = 0;
                for (int i = s; i < n; i++) {
                    double x = a[k * n + i] / scale;
                    sum += x * x;
                }
                double norm = scale * Math.sqrt(sum);
                double alpha = a[k * n + s];
                double beta = alpha > 0 ? -norm : norm;
                double v0 = alpha - beta;
                v[s] = 1;
                for (int i = s + 1; i < n; i++) {
                    v[i] = a[k * n + i] / v0;
                }
                double tau = (beta - alpha) / beta;
                e[k] = beta;
                // S ← H·S·H with H = I − tau·v·vᵀ: p = tau·S·v, w = p − (tau/2)(pᵀv)·v, S ← S − v·wᵀ − w·vᵀ
                parallelRows(s, n, pool, (from, to) -> {
                    for (int i = from; i < to; i++) {
                        double acc = 0;
                        for (int j = s; j < n; j++) {
                            acc += a[i * n + j] * v[j];
                        }
                        p[i] = tau * acc;
                    }
                });
                double pv = 0;
                for (int i = s; i < n; i++) {
                    pv += p[i] * v[i];
                }
                double half = 0.5 * tau * pv;
                for (int i = s; i < n; i++) {
                    p[i] -= half * v[i]; // p now holds w
                }
                parallelRows(s, n, pool, (from, to) -> {
                    for (int i = from; i < to; i++) {
                        double vi = v[i];
                        double wi = p[i];
                        int o = i * n;
                        for (int j = s; j < n; j++) {
                            a[o + j] -= vi * p[j] + wi * v[j];
                        }
                    }
                });
            }
        } finally {
            if (pool != null) {
                pool.shutdown();
            }
        }
        if (n >= 2) {
            d[n - 2] = a[(n - 2) * n + n - 2];
            e[n - 2] = a[(n - 1) * n + n - 2];
        }
        if (n >= 1) {
            d[n - 1] = a[(n - 1) * n + n - 1];
        }
        return new SymmetricEigen(d, e);
    }

    /** The number of eigenvalues. */
    public int size() {
        return d.length;
    }

    /** The sum of all eigenvalues (the trace, kept by the reduction up to rounding). */
    public double trace() {
        double s = 0;
        for (double x : d) {
            s += x;
        }
        return s;
    }

    /** The {@code count} largest eigenvalues, in descending order. */
    public double[] largest(int count) {
        int n = d.length;
        if (count < 0 || count > n) {
            throw new IllegalArgumentException("asked for " + count + " of " + n + " eigenvalues");
        }
        double[] out = new double[count];
        double tol = 0x1p-52 * (upper - lower) + pivmin;
        double hiBound = upper;
        for (int k = 1; k <= count; k++) {
            // the k-th largest λ_k: fewer than n − k + 1 eigenvalues lie below it, and at least that many above it
            double lo = lower;
            double hi = hiBound;
            while (hi - lo > tol + 0x1p-52 * Math.max(Math.abs(lo), Math.abs(hi))) {
                double mid = lo + 0.5 * (hi - lo);
                if (mid <= lo || mid >= hi) {
                    break;
                }
                if (below(mid) <= n - k) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            out[k - 1] = lo + 0.5 * (hi - lo);
            hiBound = hi; // λ_{k+1} ≤ λ_k
        }
        return out;
    }

    /** How many eigenvalues lie below x: the negative pivots of T − x·I (a tiny pivot counts as negative). */
    int below(double x) {
        int count = 0;
        double q = 0;
        for (int i = 0; i < d.length; i++) {
            q = d[i] - x - (i == 0 ? 0 : e[i - 1] * e[i - 1] / q);
            if (Math.abs(q) < pivmin) {
                q = -pivmin;
            }
            if (q < 0) {
                count++;
            }
        }
        return count;
    }

    private interface RowRange {
        void run(int from, int to);
    }

    private static void parallelRows(int from, int to, ForkJoinPool pool, RowRange body) {
        int rows = to - from;
        if (pool == null || rows < 256) {
            body.run(from, to);
            return;
        }
        int chunk = Math.max(64, rows / (4 * pool.getParallelism()) + 1);
        List<Callable<Void>> tasks = new ArrayList<>();
        for (int r = from; r < to; r += chunk) {
            int a = r;
            int b = Math.min(to, r + chunk);
            tasks.add(() -> {
                body.run(a, b);
                return null;
            });
        }
        pool.invokeAll(tasks).forEach(f -> {
            try {
                f.get();
            } catch (InterruptedException ex) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted", ex);
            } catch (ExecutionException ex) {
                throw new IllegalStateException(ex.getCause());
            }
        });
    }
}
