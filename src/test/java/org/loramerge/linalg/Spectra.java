package org.loramerge.linalg;

import java.util.Random;

/** Test matrices with a chosen spectrum: A = U·diag(σ)·Vᵀ with random orthonormal U and V. */
final class Spectra {
    private Spectra() {
    }

    /** An m×k matrix with orthonormal columns, from the QR of a seeded Gaussian. */
    static Matrix orthonormal(int m, int k, long seed) {
        return HouseholderQr.of(RandomizedSvd.gaussian(m, k, seed)).q();
    }

    /** The first min(m, n) values of {@code spectrum}: singular values for {@link #withSpectrum}. */
    static double[] sigmas(int m, int n, java.util.function.IntToDoubleFunction spectrum) {
        double[] sigma = new double[Math.min(m, n)];
        for (int i = 0; i < sigma.length; i++) {
            sigma[i] = spectrum.applyAsDouble(i);
        }
        return sigma;
    }

    /** The m×n matrix with singular values {@code sigma} (k = sigma.length ≤ min(m, n)). */
    static Matrix withSpectrum(int m, int n, double[] sigma, long seed) {
        int k = sigma.length;
        Matrix u = orthonormal(m, k, seed);
        Matrix v = orthonormal(n, k, seed + 1);
        return new Svd(u, sigma.clone(), v.transpose()).reconstruct();
    }

    /** sqrt(Σ_{i≥r} σ_i²) / sqrt(Σ σ_i²): the Eckart–Young optimum of the rank-r relative error. */
    static double optimalRelativeError(double[] sigma, int r) {
        double all = 0;
        double tail = 0;
        for (int i = 0; i < sigma.length; i++) {
            all += sigma[i] * sigma[i];
            if (i >= r) {
                tail += sigma[i] * sigma[i];
            }
        }
        return Math.sqrt(tail / all);
    }

    /** ‖a − b‖_F, element by element. */
    static double distance(Matrix a, Matrix b) {
        double s = 0;
        for (int i = 0; i < a.data().length; i++) {
            double d = a.data()[i] - b.data()[i];
            s += d * d;
        }
        return Math.sqrt(s);
    }

    /** max |QᵀQ − I|. */
    static double orthonormalityError(Matrix q) {
        Matrix g = q.transposeMultiply(q);
        double worst = 0;
        for (int i = 0; i < g.rows(); i++) {
            for (int j = 0; j < g.cols(); j++) {
                worst = Math.max(worst, Math.abs(g.get(i, j) - (i == j ? 1 : 0)));
            }
        }
        return worst;
    }

    static Matrix gaussian(int m, int n, long seed) {
        Matrix g = Matrix.zeros(m, n);
        Random r = new Random(seed);
        for (int i = 0; i < g.data().length; i++) {
            g.data()[i] = r.nextGaussian();
        }
        return g;
    }

    /** A matrix as row blocks of {@code blockRows} rows, copied into a reused array as a streaming source would. */
    static RowBlocks inBlocks(Matrix a, int blockRows) {
        return new RowBlocks() {
            @Override
            public int rows() {
                return a.rows();
            }

            @Override
            public int cols() {
                return a.cols();
            }

            @Override
            public void forEachBlock(Visitor visitor) throws java.io.IOException {
                int n = a.cols();
                double[] buf = new double[blockRows * n];
                for (int r0 = 0; r0 < a.rows(); r0 += blockRows) {
                    int count = Math.min(blockRows, a.rows() - r0);
                    System.arraycopy(a.data(), r0 * n, buf, 0, count * n);
                    java.util.Arrays.fill(buf, count * n, buf.length, Double.NaN); // stale data past the block must not be read
                    visitor.block(r0, count, buf);
                }
            }
        };
    }
}
