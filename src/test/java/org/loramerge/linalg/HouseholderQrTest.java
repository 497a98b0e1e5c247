package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class HouseholderQrTest {
    private static void assertUpperTriangular(Matrix r) {
        for (int i = 0; i < r.rows(); i++) {
            for (int j = 0; j < Math.min(i, r.cols()); j++) {
                assertEquals(0.0, r.get(i, j), "R[" + i + "," + j + "]");
            }
        }
    }

    @Test
    void tallMatrixIsOrthonormalColumnsTimesATriangle() {
        Matrix a = Spectra.gaussian(50, 20, 1);
        HouseholderQr qr = HouseholderQr.of(a);
        assertEquals(50, qr.q().rows());
        assertEquals(20, qr.q().cols());
        assertUpperTriangular(qr.r());
        assertTrue(Spectra.orthonormalityError(qr.q()) < 1e-14, "QᵀQ = I");
        assertTrue(Spectra.distance(qr.q().multiply(qr.r()), a) < 1e-13 * a.frobeniusNorm(), "QR = A");
    }

    @Test
    void wideMatrixGivesASquareQAndAWideTriangle() {
        Matrix a = Spectra.gaussian(12, 30, 2);
        HouseholderQr qr = HouseholderQr.of(a);
        assertEquals(12, qr.q().cols());
        assertEquals(30, qr.r().cols());
        assertUpperTriangular(qr.r());
        assertTrue(Spectra.orthonormalityError(qr.q()) < 1e-14);
        assertTrue(Spectra.distance(qr.q().multiply(qr.r()), a) < 1e-13 * a.frobeniusNorm());
    }

    @Test
    void rankDeficientMatrixStillGivesOrthonormalColumns() {
        // a zero column, a repeated column and a multiple of another: rank 3 of 6 columns
        Matrix g = Spectra.gaussian(40, 3, 3);
        Matrix a = Matrix.zeros(40, 6);
        for (int i = 0; i < 40; i++) {
            a.set(i, 0, g.get(i, 0));
            a.set(i, 1, 0);
            a.set(i, 2, g.get(i, 1));
            a.set(i, 3, g.get(i, 1));
            a.set(i, 4, -2.5 * g.get(i, 0));
            a.set(i, 5, g.get(i, 2));
        }
        HouseholderQr qr = HouseholderQr.of(a);
        assertTrue(Spectra.orthonormalityError(qr.q()) < 1e-14, "Q stays orthonormal for a rank-deficient A");
        assertTrue(Spectra.distance(qr.q().multiply(qr.r()), a) < 1e-13 * a.frobeniusNorm());
        assertEquals(0.0, qr.r().get(1, 1), "the zero column leaves a zero on R's diagonal");
    }
}
