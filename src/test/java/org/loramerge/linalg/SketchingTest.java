package org.loramerge.linalg;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.function.IntToDoubleFunction;
import java.util.stream.IntStream;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The randomized SVD over {@link Sketching} passes whose QRs are shifted CholeskyQR3 with the
 * Householder fallback and whose bases stay where the passes run (what the GPU engine does, {@code
 * CudaWeightDelta}, here with the products, the Tall and the bases on the host) is the CPU engine's
 * algorithm: on the same matrix the singular values agree to 1e-9 relative and the error is as
 * close to the optimum; and every basis the passes hand out is given back once, not used after,
 * with at most two held at once, also when a pass fails.
 */
class SketchingTest {
    /** A basis of the twin's passes, on the host, that knows whether it was given back. */
    private static final class HostBasis {
        private final Matrix q;
        private boolean released;

        HostBasis(Matrix q) {
            this.q = q;
        }
    }

    /** Thrown by the twin's pass that is told to fail. */
    private static final class PassFailed extends RuntimeException {
        PassFailed(int pass) {
            super("pass " + pass + " failed");
        }
    }

    /**
     * The GPU engine's passes, on the host: plain products, CholeskyQr with Householder where it
     * breaks down, the bases kept as {@link HostBasis}; the pass numbered {@code failAt} (from 0, -1
     * for none) throws.
     */
    private static class CholeskyPasses implements Sketching<HostBasis> {
        private final Matrix a;
        private final int failAt;
        private final List<HostBasis> handedOut = new ArrayList<>();
        private int passes;
        private int held;
        private int mostHeld;
        /** QRs whose CholeskyQR3 broke down, made by Householder's instead. */
        private int fallbacks;

        CholeskyPasses(Matrix a, int failAt) {
            this.a = a;
            this.failAt = failAt;
        }

        /** The thin QR of {@code y} as the GPU engine makes it: CholeskyQR3, else Householder's, counted. */
        private ThinQr qr(Matrix y) {
            CholeskyQr.HostTall tall = new CholeskyQr.HostTall(y);
            Optional<Matrix> r = CholeskyQr.factor(tall);
            if (r.isPresent()) {
                return new ThinQr(tall.download(), r.get());
            }
            fallbacks++;
            return ThinQr.householder(y);
        }

        @Override
        public int rows() {
            return a.rows();
        }

        @Override
        public int cols() {
            return a.cols();
        }

        private void pass() {
            if (passes++ == failAt) {
                throw new PassFailed(failAt);
            }
        }

        private HostBasis handOut(Matrix q) {
            HostBasis b = new HostBasis(q);
            handedOut.add(b);
            held++;
            mostHeld = Math.max(mostHeld, held);
            return b;
        }

        private static Matrix read(HostBasis b) {
            assertFalse(b.released, "a basis read after it was given back");
            return b.q;
        }

        private HostBasis basisOf(Matrix y) {
            pass();
            return handOut(qr(y).q());
        }

        @Override
        public HostBasis sketchBasis(RandomizedSvd.TestMatrix omega) {
            return basisOf(a.multiply(omega.values()));
        }

        @Override
        public HostBasis rangeBasis(HostBasis z) {
            return basisOf(a.multiply(read(z)));
        }

        @Override
        public Qr<HostBasis> transposeTimesQr(HostBasis q) {
            Matrix z = a.transposeMultiply(read(q));
            pass();
            ThinQr qr = qr(z);
            return new Qr<>(handOut(qr.q()), qr.r());
        }

        @Override
        public Matrix basisTimes(HostBasis q, Matrix c) {
            return read(q).multiply(c);
        }

        @Override
        public Matrix timesBasisTransposed(Matrix c, HostBasis q) {
            return c.multiply(read(q).transpose());
        }

        @Override
        public void release(HostBasis basis) {
            assertFalse(basis.released, "a basis given back twice");
            basis.released = true;
            held--;
        }

        void assertAllGivenBack(String where) {
            assertFalse(handedOut.isEmpty(), where);
            assertTrue(handedOut.stream().allMatch(b -> b.released), where + ": every basis handed out is given back");
        }
    }

    static Stream<Arguments> spectra() {
        return Stream.of(
                Arguments.of("rank 32 plus small full-rank noise", (IntToDoubleFunction) i -> i < 32 ? 10.0 / (1 + i) : 0.01, 0, List.of()),
                Arguments.of("decay 1/sqrt(i)", (IntToDoubleFunction) i -> 1.0 / Math.sqrt(1 + i), 0, List.of()),
                Arguments.of("geometric 0.9^i (below roundoff past i = 350)", (IntToDoubleFunction) i -> Math.pow(0.9, i), 0, List.of()),
                Arguments.of("exactly rank 8 (400x300: a QR falls back to Householder)", (IntToDoubleFunction) i -> i < 8 ? 1.0 / (1 + i) : 0, 0,
                        List.of("400x300")),
                Arguments.of("rank 32 plus noise, every 5th column exactly zero", (IntToDoubleFunction) i -> i < 32 ? 10.0 / (1 + i) : 0.01, 5, List.of()),
                Arguments.of("exactly rank 8, every 3rd column exactly zero (a QR falls back)", (IntToDoubleFunction) i -> i < 8 ? 1.0 / (1 + i) : 0, 3,
                        List.of("400x300", "300x400")));
    }

    /**
     * An m×n matrix with singular values {@code spectrum} whose columns j with j % zeroEvery ==
     * zeroEvery − 1 are exactly zero (none for 0): the spectrum's matrix on the other columns, which
     * zero columns beside them do not change. {@code sigma} receives its singular values.
     */
    private static Matrix matrix(int m, int n, IntToDoubleFunction spectrum, int zeroEvery, List<double[]> sigma) {
        int[] kept = IntStream.range(0, n).filter(j -> zeroEvery == 0 || j % zeroEvery != zeroEvery - 1).toArray();
        double[] s = Spectra.sigmas(m, kept.length, spectrum);
        sigma.add(s);
        Matrix dense = Spectra.withSpectrum(m, kept.length, s, 21);
        Matrix a = Matrix.zeros(m, n);
        for (int i = 0; i < m; i++) {
            for (int c = 0; c < kept.length; c++) {
                a.set(i, kept[c], dense.get(i, c));
            }
        }
        return a;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("spectra")
    void choleskyPassesGiveTheSameSingularValuesAndErrorAsTheHostPasses(String name, IntToDoubleFunction spectrum, int zeroEvery,
                                                                        List<String> fallsBack) throws Exception {
        for (int[] shape : new int[][] {{400, 300}, {300, 400}}) {
            int m = shape[0];
            int n = shape[1];
            int r = 32;
            List<double[]> sigmas = new ArrayList<>();
            Matrix a = matrix(m, n, spectrum, zeroEvery, sigmas);
            double[] sigma = sigmas.get(0);
            RandomizedSvd.Options options = RandomizedSvd.Options.defaults(2);
            RandomizedSvd.Result host = RandomizedSvd.truncated(Spectra.inBlocks(a, 50), r, options);
            CholeskyPasses passes = new CholeskyPasses(a, -1);
            RandomizedSvd.Result twin = RandomizedSvd.truncated(passes, host.frobeniusSquared(), r, options);
            String where = name + " " + m + "x" + n;
            passes.assertAllGivenBack(where);
            if (fallsBack.contains(m + "x" + n)) {
                assertTrue(passes.fallbacks > 0, where + ": a sketch of lower rank than its columns breaks CholeskyQR3 down, and Householder's QR makes the basis");
            } else {
                assertEquals(0, passes.fallbacks, where + ": every QR made by CholeskyQR3");
            }
            assertTrue(passes.mostHeld <= 2, where + ": " + passes.mostHeld + " bases held at once");
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
            for (int j = zeroEvery - 1; zeroEvery > 0 && j < n; j += zeroEvery) {
                for (int k = 0; k < twin.svd().rank(); k++) {
                    assertTrue(Math.abs(twin.svd().vt().get(k, j)) < 1e-12, where + ": a zero column of A has a zero column in Vᵀ, not " + j);
                }
            }
        }
    }

    /** The passes of one SVD with the defaults: the sketch, 2 per power iteration, the last QR. */
    static IntStream failingPasses() {
        return IntStream.range(0, 2 + 2 * RandomizedSvd.Options.DEFAULT_POWER_ITERATIONS);
    }

    @ParameterizedTest(name = "pass {0}")
    @MethodSource("failingPasses")
    void aPassThatFailsLeavesEveryBasisGivenBackAndItsFailureThrown(int failAt) {
        Matrix a = Spectra.withSpectrum(200, 150, Spectra.sigmas(200, 150, i -> 1.0 / (1 + i)), 5);
        CholeskyPasses passes = new CholeskyPasses(a, failAt);
        PassFailed e = assertThrows(PassFailed.class,
                () -> RandomizedSvd.truncated(passes, a.frobeniusSquared(), 16, RandomizedSvd.Options.defaults(1)));
        assertEquals("pass " + failAt + " failed", e.getMessage());
        assertSame(PassFailed.class, e.getClass());
        if (failAt > 0) {
            passes.assertAllGivenBack("failing at pass " + failAt);
        } else {
            assertTrue(passes.handedOut.isEmpty(), "the first pass failed before any basis was handed out");
        }
    }

    @ParameterizedTest(name = "pass {0}")
    @MethodSource("failingPasses")
    void aPassFailureOnADeviceWhoseReleasesThenFailIsThrownWithThemSuppressedAndEveryBasisGivenBack(int failAt) {
        Matrix a = Spectra.withSpectrum(200, 150, Spectra.sigmas(200, 150, i -> 1.0 / (1 + i)), 5);
        // releases succeed until the pass fails, then every one fails: the bases held then are given back all the same
        CholeskyPasses passes = new CholeskyPasses(a, failAt) {
            private boolean failing;

            @Override
            public HostBasis rangeBasis(HostBasis z) {
                try {
                    return super.rangeBasis(z);
                } catch (PassFailed f) {
                    failing = true;
                    throw f;
                }
            }

            @Override
            public HostBasis coRangeBasis(HostBasis q) throws IOException {
                try {
                    return super.coRangeBasis(q);
                } catch (PassFailed f) {
                    failing = true;
                    throw f;
                }
            }

            @Override
            public Qr<HostBasis> transposeTimesQr(HostBasis q) {
                try {
                    return super.transposeTimesQr(q);
                } catch (PassFailed f) {
                    failing = true;
                    throw f;
                }
            }

            @Override
            public void release(HostBasis basis) {
                super.release(basis);
                if (failing) {
                    throw new IllegalStateException("release after the device failed");
                }
            }
        };
        PassFailed e = assertThrows(PassFailed.class,
                () -> RandomizedSvd.truncated(passes, a.frobeniusSquared(), 16, RandomizedSvd.Options.defaults(1)));
        assertEquals("pass " + failAt + " failed", e.getMessage(), "the pass's failure, not a release's, is thrown");
        if (failAt > 0) {
            passes.assertAllGivenBack("failing at pass " + failAt);
            assertTrue(e.getSuppressed().length > 0, "the failed release is kept beside the pass's failure");
            for (Throwable s : e.getSuppressed()) {
                assertSame(IllegalStateException.class, s.getClass());
            }
        }
    }
}
