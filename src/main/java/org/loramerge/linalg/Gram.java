package org.loramerge.linalg;

import java.io.IOException;
import java.util.concurrent.ForkJoinPool;

/**
 * The smaller Gram matrix of an m×n matrix A: AᵀA (n×n) when n ≤ m, summed over the row blocks in
 * one pass, else A·Aᵀ (m×m), for which A is first read into memory. Its eigenvalues are the
 * squared singular values of A (plus zeros), which is how the exact Eckart–Young optimum of a
 * large matrix is found without a full SVD ({@link SymmetricEigen}).
 */
public final class Gram {
    private Gram() {
    }

    public static Matrix of(RowBlocks a, int threads) throws IOException {
        int m = a.rows();
        int n = a.cols();
        ForkJoinPool pool = threads > 1 ? new ForkJoinPool(threads) : null;
        try {
            if (n <= m) {
                Matrix g = Matrix.zeros(n, n);
                a.forEachBlock((row0, rowCount, values) -> Kernels.accumulateTransposed(values, rowCount, n, values, 0, n, g.data(), pool));
                return g;
            }
            double[] all = new double[Math.multiplyExact(m, n)];
            a.forEachBlock((row0, rowCount, values) -> System.arraycopy(values, 0, all, row0 * n, rowCount * n));
            Matrix at = Matrix.wrap(m, n, all).transpose();
            Matrix g = Matrix.zeros(m, m);
            // A·Aᵀ = (Aᵀ)ᵀ·Aᵀ: the same pass product over the rows of Aᵀ
            Kernels.accumulateTransposed(at.data(), n, m, at.data(), 0, m, g.data(), pool);
            return g;
        } finally {
            if (pool != null) {
                pool.shutdown();
            }
        }
    }
}
