package org.loramerge.linalg;

import java.util.Optional;
import java.util.function.Supplier;

/**
 * The thin QR of a tall m×l matrix Y that lives where its products are cheap (a GPU) while the
 * l×l work runs on the host in double: shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto,
 * Yanagisawa 2020, "Shifted Cholesky QR for computing the QR factorization of ill-conditioned
 * matrices", algorithm 4.1). Each of the three steps forms the Gram matrix G = YᵀY where Y lives,
 * factors G (+ a shift in the first step) = RᵀR by Cholesky here, and overwrites Y by Y·R⁻¹ there;
 * the shift s = 11·(m·l + l·(l + 1))·u·‖Y‖²_F makes the first Cholesky succeed for any Y whose
 * condition number is below about 1/u, and the two plain steps then make the columns orthonormal
 * to working precision. R = R₃·R₂·R₁.
 *
 * <p>A Y that is rank-deficient to working precision (a ΔW of lower rank than the sketch) can break
 * the later steps down; a last Gram matrix checks the result, and {@link #factor} reports a failure
 * instead of a basis that is not orthonormal, for the caller to take Householder's QR of the
 * original Y ({@link ThinQr#householder}), which is backward stable for any Y.
 */
public final class CholeskyQr {
    /** Largest |QᵀQ − I| entry of a basis accepted: a few hundred units of roundoff at l ≤ 512. */
    static final double ORTHOGONALITY_TOLERANCE = 1e-12;
    private static final double UNIT_ROUNDOFF = 0x1p-53;

    /** A tall m×l matrix where it lives, with the two products the factorization needs there. */
    public interface Tall {
        int rows();

        int cols();

        /** YᵀY of the current Y, l×l (both triangles), on the host: the one step that waits for Y where it lives. */
        Matrix gram();

        /**
         * Overwrites Y by Y·R⁻¹, R l×l upper triangular with a nonzero diagonal. Where Y lives on a
         * device this may only queue the solve there: the next {@link #gram} or {@link #download}
         * sees its result, and R may be changed once it returns.
         */
        void solveUpper(Matrix r);

        /** Y as it is now, on the host. */
        Matrix download();
    }

    private CholeskyQr() {
    }

    /**
     * The thin QR of a tall matrix: {@link #factor} of {@code working} (a copy of it, changed in
     * place) where that succeeds, else Householder's QR on the host of the {@code original} matrix.
     */
    public static ThinQr of(Tall working, Supplier<Matrix> original) {
        Optional<Matrix> r = factor(working);
        return r.isPresent() ? new ThinQr(working.download(), r.get()) : ThinQr.householder(original.get());
    }

    /**
     * Factors {@code y} in place: on success Y holds Q (orthonormal columns) and the R with
     * Y_before = Q·R is returned; empty when the factorization broke down (a Cholesky that failed,
     * or a Q that is not orthonormal to {@link #ORTHOGONALITY_TOLERANCE}), Y then holding garbage.
     */
    public static Optional<Matrix> factor(Tall y) {
        return factor(y, true);
    }

    /**
     * {@link #factor} where only Q is wanted (the randomized SVD's inner passes): Y holds Q when
     * this returns true, and R is not formed (two l×l products on the host saved). False when the
     * factorization broke down, Y then holding garbage.
     */
    public static boolean orthonormalize(Tall y) {
        return factor(y, false).isPresent();
    }

    /** {@link #factor}, R = R₃·R₂·R₁ formed only where {@code accumulate}; else the last step's factor stands for it. */
    private static Optional<Matrix> factor(Tall y, boolean accumulate) {
        int m = y.rows();
        int l = y.cols();
        if (l == 0 || m < l) {
            throw new IllegalArgumentException("a thin QR needs a tall matrix, not " + m + "x" + l);
        }
        Matrix g = y.gram();
        double trace = 0;
        for (int i = 0; i < l; i++) {
            trace += g.get(i, i);
        }
        if (!(trace > 0) || !Double.isFinite(trace)) {
            return Optional.empty(); // a zero (or non-finite) Y has no basis of its own
        }
        double shift = 11 * ((double) m * l + (double) l * (l + 1)) * UNIT_ROUNDOFF * trace;
        Matrix r = null;
        for (int step = 0; step < 3; step++) {
            if (step > 0) {
                g = y.gram();
            }
            Matrix rs = cholesky(g, step == 0 ? shift : 0);
            if (rs == null) {
                return Optional.empty();
            }
            y.solveUpper(rs);
            r = r == null || !accumulate ? rs : rs.multiply(r);
        }
        Matrix check = y.gram();
        for (int i = 0; i < l; i++) {
            for (int j = 0; j < l; j++) {
                double e = check.get(i, j) - (i == j ? 1 : 0);
                if (!(Math.abs(e) <= ORTHOGONALITY_TOLERANCE)) {
                    return Optional.empty();
                }
            }
        }
        return Optional.of(r);
    }

    /**
     * The upper triangular R with RᵀR = G + shift·I, from G's lower triangle, or null when that
     * matrix is not numerically positive definite (a pivot not positive, or not finite).
     */
    static Matrix cholesky(Matrix g, double shift) {
        int l = g.rows();
        double[] lower = new double[l * l];
        for (int i = 0; i < l; i++) {
            for (int j = 0; j <= i; j++) {
                double s = g.get(i, j) + (i == j ? shift : 0);
                for (int k = 0; k < j; k++) {
                    s -= lower[i * l + k] * lower[j * l + k];
                }
                if (i == j) {
                    if (!(s > 0) || !Double.isFinite(s)) {
                        return null;
                    }
                    lower[i * l + i] = Math.sqrt(s);
                } else {
                    lower[i * l + j] = s / lower[j * l + j];
                }
            }
        }
        Matrix r = Matrix.zeros(l, l);
        for (int i = 0; i < l; i++) {
            for (int j = 0; j <= i; j++) {
                r.set(j, i, lower[i * l + j]);
            }
        }
        return r;
    }

    /** A {@link Tall} on the host, for tests and for checking a device's: a copy of {@code y}, changed in place. */
    public static final class HostTall implements Tall {
        private final Matrix y;

        public HostTall(Matrix y) {
            this.y = y.copy();
        }

        @Override
        public Matrix download() {
            return y.copy();
        }

        @Override
        public int rows() {
            return y.rows();
        }

        @Override
        public int cols() {
            return y.cols();
        }

        @Override
        public Matrix gram() {
            return y.transposeMultiply(y);
        }

        @Override
        public void solveUpper(Matrix r) {
            int l = y.cols();
            double[] d = y.data();
            for (int i = 0; i < y.rows(); i++) {
                int o = i * l;
                // row i of Y·R⁻¹ is x with x·R = y_i: forward substitution along the columns of R
                for (int j = 0; j < l; j++) {
                    double s = d[o + j];
                    for (int k = 0; k < j; k++) {
                        s -= d[o + k] * r.get(k, j);
                    }
                    d[o + j] = s / r.get(j, j);
                }
            }
        }
    }
}
