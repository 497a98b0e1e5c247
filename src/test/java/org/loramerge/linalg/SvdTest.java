package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class SvdTest {
    /** σ from 1 down to 1e-12 over 25 values, some repeated. */
    private static double[] spectrum() {
        double[] s = new double[25];
        for (int i = 0; i < s.length; i++) {
            s[i] = Math.pow(10, -i / 2);
        }
        return s;
    }

    private static void assertDecomposes(Matrix a, Svd svd, double[] expected) {
        double top = expected[0];
        for (int i = 0; i < expected.length; i++) {
            assertEquals(expected[i], svd.sigma()[i], 1e-13 * top, "σ" + i);
        }
        for (int i = 1; i < svd.rank(); i++) {
            assertTrue(svd.sigma()[i] <= svd.sigma()[i - 1], "descending");
        }
        assertTrue(Spectra.orthonormalityError(svd.u().leftColumns(expected.length)) < 1e-13, "U orthonormal");
        assertTrue(Spectra.orthonormalityError(svd.vt().transpose().leftColumns(expected.length)) < 1e-13, "V orthonormal");
        assertTrue(Spectra.distance(svd.reconstruct(), a) < 1e-13 * a.frobeniusNorm(), "U·Σ·Vᵀ = A");
    }

    @Test
    void tallMatrixOfAKnownSpectrumGivesItsSingularValues() {
        double[] s = spectrum();
        Matrix a = Spectra.withSpectrum(60, 25, s, 4);
        assertDecomposes(a, Svd.of(a), s);
    }

    @Test
    void wideMatrixOfAKnownSpectrumGivesItsSingularValues() {
        double[] s = spectrum();
        Matrix a = Spectra.withSpectrum(25, 70, s, 5);
        Svd svd = Svd.of(a);
        assertEquals(25, svd.rank());
        assertEquals(70, svd.vt().cols());
        assertDecomposes(a, svd, s);
    }

    @Test
    void repeatedSingularValuesDecomposeAsWell() {
        double[] s = {3, 3, 3, 1, 1, 0.5};
        Matrix a = Spectra.withSpectrum(30, 6, s, 6);
        assertDecomposes(a, Svd.of(a), s);
    }

    @Test
    void zeroMatrixHasZeroSingularValuesAndZeroVectors() {
        Svd svd = Svd.of(Matrix.zeros(5, 3));
        assertArrayEquals(new double[3], svd.sigma());
        assertArrayEquals(new double[15], svd.u().data());
    }

    @Test
    void nanIsRefused() {
        Matrix a = Spectra.gaussian(4, 4, 1);
        a.set(2, 2, Double.NaN);
        assertThrows(IllegalArgumentException.class, () -> Svd.of(a));
    }

    @Test
    void svdOfALowRankProductEqualsTheSvdOfTheFormedProduct() {
        Matrix b = Spectra.gaussian(80, 6, 7);
        Matrix a = Spectra.gaussian(6, 50, 8);
        Matrix product = b.multiply(a);
        Svd dense = Svd.of(product);
        Svd low = Svd.ofProduct(b, a);
        assertEquals(6, low.rank());
        for (int i = 0; i < 6; i++) {
            assertEquals(dense.sigma()[i], low.sigma()[i], 1e-13 * dense.sigma()[0], "σ" + i);
        }
        for (int i = 6; i < dense.rank(); i++) {
            assertTrue(dense.sigma()[i] < 1e-13 * dense.sigma()[0], "the product has rank 6");
        }
        assertTrue(Spectra.distance(low.reconstruct(), product) < 1e-13 * product.frobeniusNorm());
        assertTrue(Spectra.orthonormalityError(low.u()) < 1e-13);
        assertTrue(Spectra.orthonormalityError(low.vt().transpose()) < 1e-13);
    }

    @Test
    void truncationKeepsTheLeadingTripletsAndTheirEnergy() {
        double[] s = {4, 2, 1, 0.5};
        Svd svd = Svd.of(Spectra.withSpectrum(10, 8, s, 9));
        Svd two = svd.truncate(2);
        assertEquals(2, two.rank());
        assertEquals(20.0, two.energy(2), 1e-12);
        assertEquals(svd.u().get(3, 1), two.u().get(3, 1));
        assertEquals(svd.vt().get(1, 7), two.vt().get(1, 7));
    }
}
