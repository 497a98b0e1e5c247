package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Optional;
import org.junit.jupiter.api.Test;

/**
 * Shifted CholeskyQR3, the QR of the GPU engine's sketches, run here on the host ({@link
 * CholeskyQr.HostTall}): orthonormal Q and Y = Q·R to working precision wherever Y has a numerical
 * rank of its own, ill-conditioned and numerically rank-deficient included; a breakdown is reported,
 * never a false basis; and the fallback then gives Householder's QR.
 */
class CholeskyQrTest {
    private static double relativeDistance(Matrix a, Matrix b) {
        return Spectra.distance(a, b) / b.frobeniusNorm();
    }

    private static void assertUpperTriangular(Matrix r) {
        for (int i = 0; i < r.rows(); i++) {
            for (int j = 0; j < i; j++) {
                assertEquals(0.0, r.get(i, j), "R[" + i + ", " + j + "]");
            }
        }
    }

    @Test
    void wellConditionedTallMatrixFactorsIntoOrthonormalColumnsAndAnUpperTriangle() {
        Matrix y = Spectra.gaussian(500, 30, 1);
        CholeskyQr.HostTall t = new CholeskyQr.HostTall(y);
        Optional<Matrix> r = CholeskyQr.factor(t);
        assertTrue(r.isPresent());
        Matrix q = t.download();
        assertTrue(Spectra.orthonormalityError(q) < 1e-14, "QᵀQ − I: " + Spectra.orthonormalityError(q));
        assertUpperTriangular(r.get());
        assertTrue(relativeDistance(q.multiply(r.get()), y) < 1e-14, "Q·R = Y: " + relativeDistance(q.multiply(r.get()), y));
    }

    @Test
    void orthonormalizingWithoutRGivesTheSameBasisBitForBitAsTheFullFactorization() {
        for (Matrix y : new Matrix[] {Spectra.gaussian(500, 30, 1), Spectra.gaussian(60, 3, 3).multiply(Spectra.gaussian(3, 20, 4))}) {
            CholeskyQr.HostTall full = new CholeskyQr.HostTall(y);
            CholeskyQr.HostTall qOnly = new CholeskyQr.HostTall(y);
            boolean factored = CholeskyQr.factor(full).isPresent();
            assertEquals(factored, CholeskyQr.orthonormalize(qOnly), "both succeed or both break down");
            if (factored) {
                assertArrayEquals(full.download().data(), qOnly.download().data(), "the same Q: R's product is not part of it");
            }
        }
        // an exactly zero column breaks both down, and both say so
        Matrix zeroColumn = Spectra.gaussian(100, 10, 5);
        for (int i = 0; i < 100; i++) {
            zeroColumn.set(i, 4, 0);
        }
        assertTrue(CholeskyQr.factor(new CholeskyQr.HostTall(zeroColumn)).isEmpty());
        assertTrue(!CholeskyQr.orthonormalize(new CholeskyQr.HostTall(zeroColumn)), "the breakdown is reported without R too");
    }

    @Test
    void illConditionedMatrixIsFactoredThanksToTheShift() {
        // condition number 1e12: its Gram matrix's is 1e24, far beyond what plain Cholesky QR survives
        double[] sigma = new double[25];
        for (int i = 0; i < sigma.length; i++) {
            sigma[i] = Math.pow(10, -12.0 * i / (sigma.length - 1));
        }
        Matrix y = Spectra.withSpectrum(400, 25, sigma, 2);
        assertNull(CholeskyQr.cholesky(y.transposeMultiply(y), 0), "unshifted, the Gram matrix is not numerically positive definite");
        assertFactorsToAnOrthonormalBasis(y);
    }

    @Test
    void numericallyRankDeficientMatrixStillGetsAnOrthonormalBasis() {
        // exact rank 3 in 20 columns, but for the product's rounding: a ΔW of lower rank than the sketch gives such products
        Matrix y = Spectra.gaussian(60, 3, 3).multiply(Spectra.gaussian(3, 20, 4));
        assertFactorsToAnOrthonormalBasis(y);
    }

    @Test
    void zeroColumnsBreakItDownAndTheFallbackIsHouseholdersQr() {
        // a column that is exactly zero stays zero through every solve: its Gram pivot is 0 in the second step
        Matrix y = Spectra.gaussian(60, 20, 5);
        for (int i = 0; i < 60; i++) {
            for (int j = 12; j < 20; j++) {
                y.set(i, j, 0);
            }
        }
        assertTrue(CholeskyQr.factor(new CholeskyQr.HostTall(y)).isEmpty(), "the breakdown is reported");
        ThinQr qr = CholeskyQr.of(new CholeskyQr.HostTall(y), () -> y);
        HouseholderQr h = HouseholderQr.of(y);
        assertEquals(0.0, Spectra.distance(qr.q(), h.q()), "Householder's Q");
        assertEquals(0.0, Spectra.distance(qr.r(), h.r()), "Householder's R");
        assertTrue(Spectra.orthonormalityError(qr.q()) < 1e-14);
    }

    @Test
    void zeroMatrixHasNoCholeskyFactorization() {
        assertTrue(CholeskyQr.factor(new CholeskyQr.HostTall(Matrix.zeros(10, 4))).isEmpty());
    }

    @Test
    void choleskyOfAMatrixThatIsNotPositiveDefiniteIsNull() {
        Matrix g = Matrix.wrap(2, 2, new double[] {1, 2, 2, 1}); // eigenvalues 3 and −1
        assertNull(CholeskyQr.cholesky(g, 0));
        Matrix r = CholeskyQr.cholesky(g, 2); // + 2·I: eigenvalues 5 and 1
        Matrix rtr = r.transposeMultiply(r);
        assertEquals(0.0, Spectra.distance(rtr, Matrix.wrap(2, 2, new double[] {3, 2, 2, 3})), 1e-15);
    }

    /** CholeskyQR3 of {@code y} succeeds, with QᵀQ = I to 1e-13 and Q·R = Y to 1e-14. */
    private static void assertFactorsToAnOrthonormalBasis(Matrix y) {
        CholeskyQr.HostTall t = new CholeskyQr.HostTall(y);
        Optional<Matrix> r = CholeskyQr.factor(t);
        assertTrue(r.isPresent());
        Matrix q = t.download();
        assertTrue(Spectra.orthonormalityError(q) < 1e-13, "QᵀQ − I: " + Spectra.orthonormalityError(q));
        assertTrue(relativeDistance(q.multiply(r.get()), y) < 1e-14, "Q·R = Y: " + relativeDistance(q.multiply(r.get()), y));
    }
}
