package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class ResidualTest {
    @Test
    void squaredDistanceIsTheFrobeniusDistanceToTheProduct() throws Exception {
        Matrix a = Spectra.gaussian(37, 23, 31);
        Matrix u = Spectra.gaussian(37, 3, 32);
        Matrix vt = Spectra.gaussian(3, 23, 33);
        double expected = Math.pow(Spectra.distance(a, u.multiply(vt)), 2);
        double whole = Residual.squaredDistance(a, u, vt, 1);
        assertEquals(expected, whole, 1e-12 * expected);
        assertEquals(whole, Residual.squaredDistance(Spectra.inBlocks(a, 5), u, vt, 3), "blocks and threads do not change the sum");
    }

    @Test
    void exactFactorizationHasZeroDistanceAndAPerturbationIsMeasuredWithoutCancellation() throws Exception {
        Matrix u = Spectra.gaussian(30, 4, 34);
        Matrix vt = Spectra.gaussian(4, 20, 35);
        Matrix a = u.multiply(vt);
        a.set(7, 11, a.get(7, 11) + 1e-9); // far below ‖A‖·1e-8: lost in ‖A‖² − 2⟨A, UVᵀ⟩ + ‖UVᵀ‖²
        double d = Residual.squaredDistance(a, u, vt, 2);
        assertEquals(1e-18, d, 1e-22);
    }
}
