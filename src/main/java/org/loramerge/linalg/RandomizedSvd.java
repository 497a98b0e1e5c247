package org.loramerge.linalg;

import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.ForkJoinPool;

/**
 * A truncated SVD of a large matrix by randomized range finding with subspace (power) iterations
 * (Halko, Martinsson, Tropp 2011, "Finding structure with randomness", algorithms 4.4 and 5.1):
 *
 * <ol>
 *   <li>Y = A·Ω for a Gaussian n×l test matrix Ω, l = rank + oversampling; Q = qr(Y);</li>
 *   <li>{@code powerIterations} times: Q = qr(A·qr(Aᵀ·Q)), re-orthonormalized at every step so that
 *       small singular values are not lost to rounding;</li>
 *   <li>Bᵀ = Aᵀ·Q (n×l), Bᵀ = Q'·R', the small SVD R'ᵀ = U_c·Σ·V_cᵀ in double, and then
 *       A ≈ (Q·U_c)·Σ·(Q'·V_c)ᵀ, truncated to the rank.</li>
 * </ol>
 *
 * <p>A is read in 2 + 2·powerIterations passes ({@link RowBlocks}), never held whole; the memory is
 * (m + n)·l doubles and one block. Where A lives elsewhere (on a GPU), the same steps run over its
 * {@link Sketching} passes, which compute the products and their QRs there. Every step is deterministic: Ω comes from a seeded
 * {@link Random}, and the pass products ({@link Kernels}) do not depend on the thread count or on
 * how A is cut into blocks, so the same input and options give the same bits.
 *
 * <p>The approximation is an orthogonal projection of A onto the span of the first {@code rank}
 * columns of Q·U_c, so its error is exactly {@code ‖A‖²_F − Σ σ_i²} (in exact arithmetic) and the
 * σ_i found are never larger than A's. With the defaults the rank-r error is within 1% of the
 * optimal one, {@code sqrt(Σ_{i>r} σ_i(A)²)} (Eckart–Young), on the spectra of the tests
 * ({@code RandomizedSvdTest}).
 */
public final class RandomizedSvd {
    /**
     * Knobs of the algorithm.
     *
     * @param oversampling    extra sketch columns beyond the rank (HMT recommend 5 to 10)
     * @param powerIterations subspace iterations; each costs two passes over A and sharpens a slowly
     *                        decaying spectrum
     * @param seed            seed of the Gaussian test matrix
     * @param threads         threads for the pass products
     */
    public record Options(int oversampling, int powerIterations, long seed, int threads) {
        public static final int DEFAULT_OVERSAMPLING = 10;
        public static final int DEFAULT_POWER_ITERATIONS = 3;
        public static final long DEFAULT_SEED = 14;

        public Options {
            if (oversampling < 0 || powerIterations < 0 || threads < 1) {
                throw new IllegalArgumentException("oversampling " + oversampling + ", power iterations " + powerIterations + ", threads " + threads);
            }
        }

        public static Options defaults(int threads) {
            return new Options(DEFAULT_OVERSAMPLING, DEFAULT_POWER_ITERATIONS, DEFAULT_SEED, threads);
        }
    }

    /**
     * A truncated SVD and the squared Frobenius norm of the matrix it approximates.
     *
     * @param svd               the leading singular triplets found
     * @param frobeniusSquared  ‖A‖²_F, summed during the first pass
     */
    public record Result(Svd svd, double frobeniusSquared) {
        /** The share of ‖A‖²_F that the rank-r truncation keeps: Σ_{i≤r} σ_i² / ‖A‖²_F (1 for a zero A). */
        public double energyKept(int r) {
            return frobeniusSquared == 0 ? 1 : Math.min(1, svd.energy(r) / frobeniusSquared);
        }

        /** ‖A − A_r‖_F / ‖A‖_F of the rank-r truncation, from the kept energy (0 for a zero A). */
        public double relativeError(int r) {
            return frobeniusSquared == 0 ? 0 : Math.sqrt(Math.max(0, frobeniusSquared - svd.energy(r)) / frobeniusSquared);
        }

        /** The smallest rank (at most the rank found) whose truncation keeps {@code share} of ‖A‖²_F; the rank found if none does. */
        public int rankKeeping(double share) {
            double need = share * frobeniusSquared;
            double s = 0;
            for (int r = 0; r < svd.rank(); r++) {
                if (s >= need) {
                    return r;
                }
                s += svd.sigma()[r] * svd.sigma()[r];
            }
            return svd.rank();
        }
    }

    private RandomizedSvd() {
    }

    /**
     * The leading {@code min(rank, rows, cols)} singular triplets of {@code a}, whose values must be
     * finite, on the host: {@code a} is read once per pass, and ‖A‖²_F summed during the first.
     */
    public static Result truncated(RowBlocks a, int rank, Options options) throws IOException {
        if (rank < 0) {
            throw new IllegalArgumentException("rank " + rank);
        }
        ForkJoinPool pool = options.threads() > 1 ? new ForkJoinPool(options.threads()) : null;
        try {
            HostPasses passes = new HostPasses(a, pool);
            Svd svd = sketch(passes, rank, options);
            return new Result(svd, passes.frob[0]);
        } finally {
            if (pool != null) {
                pool.shutdown();
            }
        }
    }

    /**
     * The same algorithm over a matrix that lives elsewhere (a GPU's memory), whose products and
     * thin QRs {@code a} computes there, and whose bases it keeps there from one pass to the next;
     * {@code frobeniusSquared} is ‖A‖²_F, known to the caller. Only Ω, the l×l factors, the small
     * SVD and the singular vectors found are on the host.
     */
    public static <B> Result truncated(Sketching<B> a, double frobeniusSquared, int rank, Options options) throws IOException {
        if (rank < 0) {
            throw new IllegalArgumentException("rank " + rank);
        }
        if (!Double.isFinite(frobeniusSquared)) {
            throw new IllegalArgumentException("the matrix holds NaN or infinite values, or its norm overflows");
        }
        return new Result(sketch(a, rank, options), frobeniusSquared);
    }

    /**
     * The algorithm of the class comment, its passes and QRs made by {@code a}, which keeps the
     * bases; each is given back as soon as the next pass has read it, and all of them on a failure.
     * A release that fails after a pass failed (a device whose error is sticky fails every later
     * call) is added to the pass's failure as suppressed, and the other basis is still given back.
     */
    private static <B> Svd sketch(Sketching<B> a, int rank, Options options) throws IOException {
        int m = a.rows();
        int n = a.cols();
        int k = Math.min(rank, Math.min(m, n));
        int l = Math.min(k + options.oversampling(), Math.min(m, n));
        TestMatrix omega = new TestMatrix(n, l, options.seed());
        B q = null; // rows × l
        B z = null; // cols × l
        Throwable failure = null;
        try {
            q = a.sketchBasis(omega);
            for (int it = 0; it < options.powerIterations(); it++) {
                z = a.coRangeBasis(q);
                B read = q;
                q = null; // released once, even where the release fails
                a.release(read);
                q = a.rangeBasis(z);
                read = z;
                z = null;
                a.release(read);
            }
            Sketching.Qr<B> qr = a.transposeTimesQr(q); // Bᵀ = Aᵀ·Q = Q'·R', so B = R'ᵀ·Q'ᵀ
            z = qr.q();
            Svd core = Svd.of(qr.r().transpose());
            core = core.truncate(Math.min(k, core.rank())); // the columns kept are the same whether truncated before or after
            return new Svd(a.basisTimes(q, core.u()), core.sigma(), a.timesBasisTransposed(core.vt(), z));
        } catch (Throwable e) {
            failure = e;
            throw e;
        } finally {
            releaseAll(a, failure, z, q);
        }
    }

    /**
     * Gives back each basis that is not null, every one even where a release fails. With no {@code
     * failure} being thrown, the first release failure is thrown (the others suppressed in it);
     * else the release failures are suppressed in {@code failure}.
     */
    @SafeVarargs
    private static <B> void releaseAll(Sketching<B> a, Throwable failure, B... bases) {
        RuntimeException first = null;
        for (B b : bases) {
            if (b == null) {
                continue;
            }
            try {
                a.release(b);
            } catch (RuntimeException e) {
                if (failure != null) {
                    failure.addSuppressed(e);
                } else if (first == null) {
                    first = e;
                } else {
                    first.addSuppressed(e);
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }

    /**
     * The Gaussian test matrix Ω of a sketch, n×l from {@code seed} ({@link #gaussian}): the key that
     * names it, so that passes which keep Ω elsewhere (a GPU's memory) can keep one copy of it for
     * every weight of one shape instead of taking it again per weight, and its values on the host.
     */
    public record TestMatrix(int rows, int cols, long seed) {
        /** Its values, n×l on the host; kept for the next weight of the same shape. Read only. */
        public Matrix values() {
            return omega(rows, cols, seed);
        }
    }

    /** The last few test matrices, by (n, l, seed): extract decomposes many weights of one shape with one seed. Read only. */
    private static final Map<List<Long>, Matrix> OMEGAS = new LinkedHashMap<>(8, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(Map.Entry<List<Long>, Matrix> eldest) {
            return size() > 4;
        }
    };

    /** {@link #gaussian}, kept for the next weight of the same shape (it is never written to). */
    private static Matrix omega(int n, int l, long seed) {
        List<Long> key = List.of((long) n, (long) l, seed);
        synchronized (OMEGAS) {
            Matrix m = OMEGAS.get(key);
            if (m != null) {
                return m;
            }
        }
        Matrix m = gaussian(n, l, seed);
        synchronized (OMEGAS) {
            OMEGAS.put(key, m);
        }
        return m;
    }

    /** The passes over row blocks on the host: {@link Kernels}' products, Householder QRs, ‖A‖²_F in the first pass; the bases are host matrices. */
    private static final class HostPasses implements Sketching<Matrix> {
        private final RowBlocks a;
        private final ForkJoinPool pool;
        private final double[] frob = new double[1];
        private boolean first = true;

        HostPasses(RowBlocks a, ForkJoinPool pool) {
            this.a = a;
            this.pool = pool;
        }

        @Override
        public int rows() {
            return a.rows();
        }

        @Override
        public int cols() {
            return a.cols();
        }

        @Override
        public Matrix sketchBasis(RandomizedSvd.TestMatrix omega) throws IOException {
            return rangeBasis(omega.values());
        }

        @Override
        public Matrix rangeBasis(Matrix x) throws IOException {
            Matrix y = times(a, x, first ? frob : null, pool);
            if (first && !Double.isFinite(frob[0])) {
                throw new IllegalArgumentException("the matrix holds NaN or infinite values, or its norm overflows");
            }
            first = false;
            return HouseholderQr.of(y).q();
        }

        @Override
        public Matrix coRangeBasis(Matrix q) throws IOException {
            return HouseholderQr.of(transposeTimes(a, q, pool)).q();
        }

        @Override
        public Qr<Matrix> transposeTimesQr(Matrix q) throws IOException {
            HouseholderQr h = HouseholderQr.of(transposeTimes(a, q, pool));
            return new Qr<>(h.q(), h.r());
        }

        @Override
        public Matrix basisTimes(Matrix q, Matrix c) {
            return q.multiply(c);
        }

        @Override
        public Matrix timesBasisTransposed(Matrix c, Matrix q) {
            return c.multiply(q.transpose());
        }
    }

    /** An n×l matrix of independent standard normal values, row by row from {@code Random(seed)}. */
    static Matrix gaussian(int n, int l, long seed) {
        Random random = new Random(seed);
        Matrix g = Matrix.zeros(n, l);
        double[] d = g.data();
        for (int i = 0; i < d.length; i++) {
            d[i] = random.nextGaussian();
        }
        return g;
    }

    /** A·X in one pass; when {@code frob} is given, ‖A‖²_F is summed into frob[0] on the way. */
    static Matrix times(RowBlocks a, Matrix x, double[] frob, ForkJoinPool pool) throws IOException {
        int n = a.cols();
        int l = x.cols();
        Matrix y = Matrix.zeros(a.rows(), l);
        a.forEachBlock((row0, rowCount, values) -> {
            Kernels.multiply(values, rowCount, n, x.data(), l, y.data(), row0 * l, pool);
            if (frob != null) {
                double s = frob[0];
                for (int i = 0, end = rowCount * n; i < end; i++) {
                    s += values[i] * values[i];
                }
                frob[0] = s;
            }
        });
        return y;
    }

    /** Aᵀ·Q in one pass. */
    static Matrix transposeTimes(RowBlocks a, Matrix q, ForkJoinPool pool) throws IOException {
        int n = a.cols();
        int l = q.cols();
        Matrix z = Matrix.zeros(n, l);
        a.forEachBlock((row0, rowCount, values) -> Kernels.accumulateTransposed(values, rowCount, n, q.data(), row0 * l, l, z.data(), pool));
        return z;
    }
}
