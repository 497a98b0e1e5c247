package org.loramerge.linalg;

/**
 * The thin QR decomposition A = Q·R of an m×n matrix by Householder reflections: with
 * k = min(m, n), Q is m×k with orthonormal columns and R is k×n upper triangular. Backward stable
 * whatever A's conditioning, and defined for rank-deficient A too (a zero column gives a zero
 * row of R and the unreflected unit vector in Q), which is why the randomized SVD
 * re-orthonormalizes its sketches with it rather than with Gram–Schmidt.
 */
public final class HouseholderQr {
    private final Matrix q;
    private final Matrix r;

    private HouseholderQr(Matrix q, Matrix r) {
        this.q = q;
        this.r = r;
    }

    /** Decomposes {@code a}, which is not changed. */
    public static HouseholderQr of(Matrix a) {
        int m = a.rows();
        int n = a.cols();
        int k = Math.min(m, n);
        // column-major working copy: each reflection runs down columns
        double[] w = new double[m * n];
        double[] ad = a.data();
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                w[j * m + i] = ad[i * n + j];
            }
        }
        double[] tau = new double[k];
        double[] diag = new double[k];
        for (int j = 0; j < k; j++) {
            int c = j * m;
            double norm = norm(w, c + j, c + m);
            if (norm == 0) {
                tau[j] = 0; // nothing to annihilate: H = I
                diag[j] = 0;
                continue;
            }
            double alpha = w[c + j];
            double beta = alpha > 0 ? -norm : norm;
            // v = x - beta·e1, scaled so that v[0] = 1; H = I - tau·v·vᵀ maps x to beta·e1
            double v0 = alpha - beta;
            for (int i = j + 1; i < m; i++) {
                w[c + i] /= v0;
            }
            w[c + j] = 1;
            tau[j] = (beta - alpha) / beta;
            diag[j] = beta;
            for (int col = j + 1; col < n; col++) {
                int o = col * m;
                double dot = 0;
                for (int i = j; i < m; i++) {
                    dot += w[c + i] * w[o + i];
                }
                double f = tau[j] * dot;
                for (int i = j; i < m; i++) {
                    w[o + i] -= f * w[c + i];
                }
            }
        }
        Matrix r = Matrix.zeros(k, n);
        for (int i = 0; i < k; i++) {
            r.set(i, i, diag[i]);
            for (int j = i + 1; j < n; j++) {
                r.set(i, j, w[j * m + i]);
            }
        }
        // Q = H_0·H_1·…·H_{k-1}·[I_k; 0], applied from the last reflection to the first (column-major)
        double[] qc = new double[m * k];
        for (int j = 0; j < k; j++) {
            qc[j * m + j] = 1;
        }
        for (int j = k - 1; j >= 0; j--) {
            if (tau[j] == 0) {
                continue;
            }
            int c = j * m;
            for (int col = j; col < k; col++) {
                int o = col * m;
                double dot = 0;
                for (int i = j; i < m; i++) {
                    dot += w[c + i] * qc[o + i];
                }
                double f = tau[j] * dot;
                for (int i = j; i < m; i++) {
                    qc[o + i] -= f * w[c + i];
                }
            }
        }
        Matrix q = Matrix.zeros(m, k);
        double[] qd = q.data();
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < k; j++) {
                qd[i * k + j] = qc[j * m + i];
            }
        }
        return new HouseholderQr(q, r);
    }

    /** ‖w[from, to)‖, scaled so that no square overflows or underflows. */
    private static double norm(double[] w, int from, int to) {
        double scale = 0;
        for (int i = from; i < to; i++) {
            scale = Math.max(scale, Math.abs(w[i]));
        }
        if (scale == 0 || !Double.isFinite(scale)) {
            return scale;
        }
        double s = 0;
        for (int i = from; i < to; i++) {
            double x = w[i] / scale;
            s += x * x;
        }
        return scale * Math.sqrt(s);
    }

    /** Q, m×k with orthonormal columns. */
    public Matrix q() {
        return q;
    }

    /** R, k×n upper triangular. */
    public Matrix r() {
        return r;
    }
}
