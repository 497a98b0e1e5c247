package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.function.IntToDoubleFunction;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The randomized truncated SVD against matrices of known spectrum, where the optimal rank-r error
 * is the tail of the singular values (Eckart–Young): with the default options the error found is
 * within 1% of it on every spectrum here, the slowly decaying ones included.
 */
class RandomizedSvdTest {
    static Stream<Arguments> spectra() {
        return Stream.of(
                Arguments.of("rank 32 plus small full-rank noise", (IntToDoubleFunction) i -> i < 32 ? 10.0 / (1 + i) : 0.01),
                Arguments.of("decay 1/i", (IntToDoubleFunction) i -> 1.0 / (1 + i)),
                Arguments.of("decay 1/sqrt(i)", (IntToDoubleFunction) i -> 1.0 / Math.sqrt(1 + i)),
                Arguments.of("decay i^-1/4", (IntToDoubleFunction) i -> Math.pow(1 + i, -0.25)),
                Arguments.of("geometric 0.9^i", (IntToDoubleFunction) i -> Math.pow(0.9, i)),
                Arguments.of("flat", (IntToDoubleFunction) i -> 1.0));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("spectra")
    void rankRErrorIsWithinOnePercentOfTheOptimum(String name, IntToDoubleFunction spectrum) throws Exception {
        for (int[] shape : new int[][] {{400, 300}, {300, 400}}) {
            int m = shape[0];
            int n = shape[1];
            int r = 32;
            double[] sigma = Spectra.sigmas(m, n, spectrum);
            Matrix a = Spectra.withSpectrum(m, n, sigma, 11);
            RandomizedSvd.Result res = RandomizedSvd.truncated(a, r, RandomizedSvd.Options.defaults(2));
            assertEquals(r, res.svd().rank());
            double measured = Spectra.distance(res.svd().reconstruct(), a) / a.frobeniusNorm();
            assertEquals(measured, res.relativeError(r), 1e-9, "the error from the kept energy is the measured error");
            double optimal = Spectra.optimalRelativeError(sigma, r);
            double ratio = measured / optimal;
            assertTrue(ratio >= 1 - 1e-9, "no rank-r matrix beats the optimum: " + ratio);
            assertTrue(ratio <= 1.01, name + " " + m + "x" + n + ": error " + measured + " is " + ratio + " times the optimum " + optimal);
            for (int i = 0; i < r; i++) {
                assertTrue(res.svd().sigma()[i] <= sigma[i] * (1 + 1e-12), "σ" + i + " found is not above the true one");
            }
            assertTrue(Spectra.orthonormalityError(res.svd().u()) < 1e-12);
            assertTrue(Spectra.orthonormalityError(res.svd().vt().transpose()) < 1e-12);
        }
    }

    @Test
    void sameInputAndSeedGiveTheSameBitsWhateverTheBlocksAndThreads() throws Exception {
        Matrix a = Spectra.gaussian(203, 157, 12);
        RandomizedSvd.Result whole = RandomizedSvd.truncated(a, 16, RandomizedSvd.Options.defaults(1));
        for (int blockRows : new int[] {1, 7, 64}) {
            for (int threads : new int[] {1, 3}) {
                RandomizedSvd.Result r = RandomizedSvd.truncated(Spectra.inBlocks(a, blockRows), 16, RandomizedSvd.Options.defaults(threads));
                String where = blockRows + "-row blocks on " + threads + " threads";
                assertArrayEquals(whole.svd().sigma(), r.svd().sigma(), where);
                assertArrayEquals(whole.svd().u().data(), r.svd().u().data(), where);
                assertArrayEquals(whole.svd().vt().data(), r.svd().vt().data(), where);
                assertEquals(whole.frobeniusSquared(), r.frobeniusSquared(), where);
            }
        }
        RandomizedSvd.Result otherSeed = RandomizedSvd.truncated(a, 16, new RandomizedSvd.Options(10, 3, 99, 1));
        assertTrue(otherSeed.svd().sigma()[15] != whole.svd().sigma()[15], "the seed is used");
    }

    @Test
    void exactlyLowRankMatrixIsRecoveredToRoundoff() throws Exception {
        Matrix a = Spectra.gaussian(120, 8, 13).multiply(Spectra.gaussian(8, 90, 14));
        RandomizedSvd.Result r = RandomizedSvd.truncated(Spectra.inBlocks(a, 16), 8, RandomizedSvd.Options.defaults(2));
        assertTrue(Spectra.distance(r.svd().reconstruct(), a) < 1e-12 * a.frobeniusNorm());
        assertEquals(1.0, r.energyKept(8), 1e-12);
    }

    @Test
    void rankKeepingAShareIsTheSmallestThatKeepsIt() throws Exception {
        double[] sigma = {4, 3, 2, 1, 0.5, 0.25}; // energies 16, 9, 4, 1, 0.25, 0.0625 of 30.3125
        Matrix a = Spectra.withSpectrum(40, 30, sigma, 15);
        RandomizedSvd.Result r = RandomizedSvd.truncated(a, 6, RandomizedSvd.Options.defaults(1));
        assertEquals(1, r.rankKeeping(0.5));
        assertEquals(2, r.rankKeeping(0.82)); // 25 / 30.3125 = 0.8247
        assertEquals(3, r.rankKeeping(0.9));
        assertEquals(5, r.rankKeeping(0.997)); // 30.25 of 30.3125 is 0.9979
        assertEquals(6, r.rankKeeping(0.999));
        assertEquals(6, r.rankKeeping(1.5), "no rank keeps more than everything: the rank found");
        assertEquals(0, r.rankKeeping(0));
    }

    @Test
    void rankAboveTheSmallerDimensionIsCappedAndExact() throws Exception {
        Matrix a = Spectra.gaussian(9, 30, 16);
        RandomizedSvd.Result r = RandomizedSvd.truncated(a, 64, RandomizedSvd.Options.defaults(1));
        assertEquals(9, r.svd().rank());
        assertTrue(Spectra.distance(r.svd().reconstruct(), a) < 1e-13 * a.frobeniusNorm());
    }

    @Test
    void nanOrInfinityIsRefused() {
        Matrix a = Spectra.gaussian(20, 10, 17);
        a.set(3, 4, Double.POSITIVE_INFINITY);
        assertThrows(IllegalArgumentException.class, () -> RandomizedSvd.truncated(a, 4, RandomizedSvd.Options.defaults(1)));
    }
}
