package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.function.IntToDoubleFunction;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The randomized SVD over {@link Sketching} passes whose QRs are shifted CholeskyQR3 with the
 * Householder fallback (what the GPU engine does, {@code CudaWeightDelta}, here with the products
 * and the Tall on the host) is the CPU engine's algorithm: on the same matrix the singular values
 * agree to 1e-9 relative and the error is as close to the optimum.
 */
class SketchingTest {
    /** The GPU engine's passes, on the host: plain products, CholeskyQr with Householder where it breaks down. */
    private record CholeskyPasses(Matrix a) implements Sketching {
        @Override
        public int rows() {
            return a.rows();
        }

        @Override
        public int cols() {
            return a.cols();
        }

        @Override
        public Matrix rangeBasis(Matrix x) {
            Matrix y = a.multiply(x);
            return CholeskyQr.of(new CholeskyQr.HostTall(y), () -> y).q();
        }

        @Override
        public Matrix coRangeBasis(Matrix q) {
            return transposeTimesQr(q).q();
        }

        @Override
        public ThinQr transposeTimesQr(Matrix q) {
            Matrix z = a.transposeMultiply(q);
            return CholeskyQr.of(new CholeskyQr.HostTall(z), () -> z);
        }
    }

    static Stream<Arguments> spectra() {
        return Stream.of(
                Arguments.of("rank 32 plus small full-rank noise", (IntToDoubleFunction) i -> i < 32 ? 10.0 / (1 + i) : 0.01),
                Arguments.of("decay 1/sqrt(i)", (IntToDoubleFunction) i -> 1.0 / Math.sqrt(1 + i)),
                Arguments.of("geometric 0.9^i (below roundoff past i = 350)", (IntToDoubleFunction) i -> Math.pow(0.9, i)),
                Arguments.of("exactly rank 8 (the QRs fall back to Householder)", (IntToDoubleFunction) i -> i < 8 ? 1.0 / (1 + i) : 0));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("spectra")
    void choleskyPassesGiveTheSameSingularValuesAndErrorAsTheHostPasses(String name, IntToDoubleFunction spectrum) throws Exception {
        for (int[] shape : new int[][] {{400, 300}, {300, 400}}) {
            int m = shape[0];
            int n = shape[1];
            int r = 32;
            double[] sigma = Spectra.sigmas(m, n, spectrum);
            Matrix a = Spectra.withSpectrum(m, n, sigma, 21);
            RandomizedSvd.Options options = RandomizedSvd.Options.defaults(2);
            RandomizedSvd.Result host = RandomizedSvd.truncated(Spectra.inBlocks(a, 50), r, options);
            RandomizedSvd.Result twin = RandomizedSvd.truncated(new CholeskyPasses(a), host.frobeniusSquared(), r, options);
            String where = name + " " + m + "x" + n;
            assertEquals(host.svd().rank(), twin.svd().rank(), where);
            double top = host.svd().sigma()[0];
            for (int i = 0; i < host.svd().rank(); i++) {
                // relative to σ_1: singular values at roundoff (the rank-8 case) agree only to roundoff of the largest
                assertEquals(host.svd().sigma()[i], twin.svd().sigma()[i], 1e-9 * Math.max(top * 1e-4, host.svd().sigma()[i]), where + " σ" + i);
            }
            double optimal = Spectra.optimalRelativeError(sigma, r);
            double measured = Spectra.distance(twin.svd().reconstruct(), a) / a.frobeniusNorm();
            if (optimal > 1e-10) {
                assertTrue(measured / optimal <= 1.01, where + ": error " + measured + " is " + measured / optimal + " times the optimum");
                double hostMeasured = Spectra.distance(host.svd().reconstruct(), a) / a.frobeniusNorm();
                assertEquals(hostMeasured / optimal, measured / optimal, 1e-6, where + ": the same ratio to the optimum");
            } else {
                assertTrue(measured < 1e-12, where + ": a rank-8 matrix is recovered to roundoff, error " + measured);
            }
            assertTrue(Spectra.orthonormalityError(twin.svd().u()) < 1e-12, where);
            assertTrue(Spectra.orthonormalityError(twin.svd().vt().transpose()) < 1e-12, where);
        }
    }
}
