package org.loramerge.linalg;

import java.io.IOException;
import java.util.concurrent.ForkJoinPool;

/**
 * The distance between a large matrix and a low-rank one, ‖A − U·Vᵀ‖_F, element by element in one
 * pass over A: the error of a factorization as it was stored (rounded factors included), without
 * the cancellation of ‖A‖² − 2⟨A, UVᵀ⟩ + ‖UVᵀ‖² when the error is small.
 */
public final class Residual {
    private Residual() {
    }

    /**
     * Σ (A − U·Vᵀ)² over all elements, with U m×r and Vᵀ r×n; the products are summed in a fixed
     * order, so the result does not depend on the threads or the blocks.
     */
    public static double squaredDistance(RowBlocks a, Matrix u, Matrix vt, int threads) throws IOException {
        int n = a.cols();
        int r = u.cols();
        if (u.rows() != a.rows() || vt.rows() != r || vt.cols() != n) {
            throw new IllegalArgumentException("U " + u.shape() + " and Vᵀ " + vt.shape() + " do not fit a " + a.rows() + "x" + n + " matrix");
        }
        ForkJoinPool pool = threads > 1 ? new ForkJoinPool(threads) : null;
        try {
            double[] sum = new double[1];
            double[][] product = new double[1][0];
            a.forEachBlock((row0, rowCount, values) -> {
                if (product[0].length < rowCount * n) {
                    product[0] = new double[rowCount * n];
                }
                double[] p = product[0];
                // the block's rows of U are rows [row0, row0 + rowCount) of U, contiguous from row0·r
                double[] ub = new double[rowCount * r];
                System.arraycopy(u.data(), row0 * r, ub, 0, rowCount * r);
                Kernels.multiply(ub, rowCount, r, vt.data(), n, p, 0, pool);
                double s = sum[0];
                for (int i = 0, end = rowCount * n; i < end; i++) {
                    double d = values[i] - p[i];
                    s += d * d;
                }
                sum[0] = s;
            });
            return sum[0];
        } finally {
            if (pool != null) {
                pool.shutdown();
            }
        }
    }
}
