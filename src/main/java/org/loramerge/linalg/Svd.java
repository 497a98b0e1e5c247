package org.loramerge.linalg;

import java.util.Arrays;

/**
 * A (thin or truncated) singular value decomposition A ≈ U·diag(σ)·Vᵀ: U is m×k, Vᵀ is k×n, σ
 * holds k values in descending order. Columns of U (rows of Vᵀ) are orthonormal, except that a
 * column belonging to σ = 0 is zero.
 *
 * <p>{@link #of} computes it for a dense matrix held in memory: Householder QR to a square
 * triangle, then one-sided Jacobi rotations (Hestenes) on the triangle, until every pair of
 * columns is orthogonal to working precision; each singular value comes out within a few units of
 * roundoff of the largest one. It is meant for the small matrices of the other decompositions
 * (a sketch's core, a low-rank product's core) and for tests; large matrices go through
 * {@link RandomizedSvd}.
 */
public record Svd(Matrix u, double[] sigma, Matrix vt) {
    /** Relative off-diagonal size under which two columns count as orthogonal, per column of the triangle. */
    private static final double TOLERANCE = 0x1p-52;
    private static final int MAX_SWEEPS = 80;

    public Svd {
        int k = sigma.length;
        if (u.cols() != k || vt.rows() != k) {
            throw new IllegalArgumentException("U " + u.shape() + ", " + k + " singular values and Vᵀ " + vt.shape() + " do not fit");
        }
    }

    /** k, the number of singular values. */
    public int rank() {
        return sigma.length;
    }

    /** The leading {@code r} singular triplets (r ≤ k). */
    public Svd truncate(int r) {
        if (r < 0 || r > sigma.length) {
            throw new IllegalArgumentException("cannot truncate rank " + sigma.length + " to " + r);
        }
        return new Svd(u.leftColumns(r), Arrays.copyOf(sigma, r), vt.topRows(r));
    }

    /** Σ σ_i² over the first {@code r} values: the squared Frobenius norm of the rank-r truncation. */
    public double energy(int r) {
        double s = 0;
        for (int i = 0; i < r; i++) {
            s += sigma[i] * sigma[i];
        }
        return s;
    }

    /** U·diag(σ)·Vᵀ. */
    public Matrix reconstruct() {
        Matrix us = u.copy();
        int k = sigma.length;
        double[] d = us.data();
        for (int i = 0; i < us.rows(); i++) {
            for (int j = 0; j < k; j++) {
                d[i * k + j] *= sigma[j];
            }
        }
        return us.multiply(vt);
    }

    /** The thin SVD of a dense matrix (k = min(m, n)); {@code a} is not changed. Its values must be finite. */
    public static Svd of(Matrix a) {
        for (double v : a.data()) {
            if (!Double.isFinite(v)) {
                throw new IllegalArgumentException("the SVD of a matrix with NaN or infinite values is undefined");
            }
        }
        if (a.rows() >= a.cols()) {
            return ofTall(a);
        }
        Svd t = ofTall(a.transpose());
        return new Svd(t.vt().transpose(), t.sigma(), t.u().transpose());
    }

    /**
     * The SVD of the product {@code b·a} (b m×r, a r×n, r small) without forming it: b = Q_b·R_b,
     * aᵀ = Q_a·R_a, so b·a = Q_b·(R_b·R_aᵀ)·Q_aᵀ, and the SVD of the small core R_b·R_aᵀ gives
     * U = Q_b·U_c and V = Q_a·V_c. Costs O((m + n)·r²); k = min(m, n, r) singular values (a product of
     * rank below r has zeros among them).
     */
    public static Svd ofProduct(Matrix b, Matrix a) {
        if (b.cols() != a.rows()) {
            throw new IllegalArgumentException("cannot multiply " + b.shape() + " by " + a.shape());
        }
        HouseholderQr qb = HouseholderQr.of(b);
        HouseholderQr qa = HouseholderQr.of(a.transpose());
        Matrix core = qb.r().multiply(qa.r().transpose());
        Svd c = of(core);
        return new Svd(qb.q().multiply(c.u()), c.sigma(), c.vt().multiply(qa.q().transpose()));
    }

    /** m ≥ n: A = Q·R, R = U_R·Σ·Vᵀ, so U = Q·U_R. */
    private static Svd ofTall(Matrix a) {
        int n = a.cols();
        if (n == 0) {
            return new Svd(Matrix.zeros(a.rows(), 0), new double[0], Matrix.zeros(0, 0));
        }
        HouseholderQr qr = HouseholderQr.of(a);
        Svd core = jacobi(qr.r());
        return new Svd(qr.q().multiply(core.u()), core.sigma(), core.vt());
    }

    /** One-sided Jacobi on a square matrix: rotate pairs of columns until all are orthogonal; their norms are σ. */
    private static Svd jacobi(Matrix r) {
        int n = r.rows();
        // column-major: column j of the working matrix G = R·V at g[j·n, (j+1)·n)
        double[] g = new double[n * n];
        double[] v = new double[n * n];
        double[] rd = r.data();
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                g[j * n + i] = rd[i * n + j];
            }
            v[i * n + i] = 1;
        }
        double tol = TOLERANCE * n;
        boolean converged = false;
        for (int sweep = 0; sweep < MAX_SWEEPS && !converged; sweep++) {
            converged = true;
            for (int p = 0; p < n - 1; p++) {
                for (int q = p + 1; q < n; q++) {
                    int po = p * n;
                    int qo = q * n;
                    double alpha = 0;
                    double beta = 0;
                    double gamma = 0;
                    for (int i = 0; i < n; i++) {
                        double x = g[po + i];
                        double y = g[qo + i];
                        alpha += x * x;
                        beta += y * y;
                        gamma += x * y;
                    }
                    if (gamma == 0 || Math.abs(gamma) <= tol * Math.sqrt(alpha) * Math.sqrt(beta)) {
                        continue;
                    }
                    converged = false;
                    // the rotation that zeroes the pair's inner product (Hestenes; Golub–Van Loan §8.6.3)
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.hypot(1, zeta));
                    double c = 1 / Math.hypot(1, t);
                    double s = c * t;
                    rotate(g, po, qo, n, c, s);
                    rotate(v, po, qo, n, c, s);
                }
            }
        }
        if (!converged) {
            throw new ArithmeticException("Jacobi SVD of a " + n + "x" + n + " matrix did not converge in " + MAX_SWEEPS + " sweeps");
        }
        double[] sigma = new double[n];
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int i = 0; i < n; i++) {
                s += g[j * n + i] * g[j * n + i];
            }
            sigma[j] = Math.sqrt(s);
        }
        Integer[] order = new Integer[n];
        for (int j = 0; j < n; j++) {
            order[j] = j;
        }
        Arrays.sort(order, (x, y) -> Double.compare(sigma[y], sigma[x])); // stable: equal values keep their order
        Matrix u = Matrix.zeros(n, n);
        Matrix vt = Matrix.zeros(n, n);
        double[] sorted = new double[n];
        for (int k = 0; k < n; k++) {
            int j = order[k];
            sorted[k] = sigma[j];
            double inv = sigma[j] == 0 ? 0 : 1 / sigma[j];
            for (int i = 0; i < n; i++) {
                u.set(i, k, g[j * n + i] * inv);
                vt.set(k, i, v[j * n + i]);
            }
        }
        return new Svd(u, sorted, vt);
    }

    /** Columns p and q of a column-major n-row array: (x, y) ← (c·x − s·y, s·x + c·y). */
    private static void rotate(double[] a, int po, int qo, int n, double c, double s) {
        for (int i = 0; i < n; i++) {
            double x = a[po + i];
            double y = a[qo + i];
            a[po + i] = c * x - s * y;
            a[qo + i] = s * x + c * y;
        }
    }
}
