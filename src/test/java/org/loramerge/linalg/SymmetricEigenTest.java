package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class SymmetricEigenTest {
    @Test
    void largestEigenvaluesOfAKnownSymmetricMatrixAreFound() {
        int n = 300; // above the threshold where the reduction runs on several threads
        double[] lambda = new double[n];
        for (int i = 0; i < n; i++) {
            lambda[i] = i < 5 ? 10 - i : (i % 3 == 0 ? -1.0 / i : 1.0 / i); // descending head, a mixed-sign tail
        }
        Matrix q = Spectra.orthonormal(n, n, 21);
        Matrix ql = q.copy();
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                ql.set(i, j, ql.get(i, j) * lambda[j]);
            }
        }
        Matrix g = ql.multiply(q.transpose());
        for (int threads : new int[] {1, 3}) {
            SymmetricEigen eig = SymmetricEigen.of(g, threads);
            double[] sorted = lambda.clone();
            java.util.Arrays.sort(sorted);
            double[] top = eig.largest(40);
            for (int k = 0; k < 40; k++) {
                assertEquals(sorted[n - 1 - k], top[k], 1e-12 * 10, "λ" + k);
            }
            double trace = 0;
            for (double l : lambda) {
                trace += l;
            }
            assertEquals(trace, eig.trace(), 1e-11);
        }
    }

    @Test
    void gramEigenvaluesAreTheSquaredSingularValuesOfTallAndWideMatrices() throws Exception {
        double[] sigma = {5, 4, 2, 1, 0.1, 0.01};
        for (int[] shape : new int[][] {{50, 20}, {20, 50}}) {
            Matrix a = Spectra.withSpectrum(shape[0], shape[1], sigma, 22);
            Matrix g = Gram.of(Spectra.inBlocks(a, 7), 2);
            assertEquals(Math.min(shape[0], shape[1]), g.rows());
            double[] top = SymmetricEigen.of(g, 1).largest(8);
            for (int i = 0; i < 8; i++) {
                assertEquals(i < sigma.length ? sigma[i] * sigma[i] : 0, top[i], 1e-12 * 25, shape[0] + "x" + shape[1] + " λ" + i);
            }
        }
    }
}
