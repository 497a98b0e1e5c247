package org.loramerge.bench;

import java.io.IOException;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.loramerge.linalg.Gram;
import org.loramerge.linalg.HouseholderQr;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.RowBlocks;
import org.loramerge.linalg.Svd;
import org.loramerge.linalg.SymmetricEigen;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * The CPU truncated SVD of extract on one dense ΔW in memory, all cores: a 4096x4096 matrix that is
 * a rank-64 delta of decaying spectrum (σ_i = 0.5·0.97^i, ‖·‖_F about 2) plus full-rank noise (std
 * 1e-4, ‖·‖_F about 0.4), which is what a fine-tune's difference looks like (scripts/bench/make_tuned.py
 * makes the same kind for the end-to-end benchmark), read in 32 MB row blocks as extract reads a
 * weight. One op is one RandomizedSvd.truncated at rank 64: 2 + 2·powerIterations passes of
 * 2·m·n·(rank + oversampling) flops, the QRs and the small SVD. At the end of the trial the error of
 * the last result and the exact Eckart–Young optimum (computed once in the setup from the Gram
 * matrix's eigenvalues, which takes longer than the benchmark) are printed.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Fork(value = 1, jvmArgs = {"-Xmx4g"})
@Warmup(iterations = 1)
@Measurement(iterations = 3)
public class SvdBenchmark {
    @Param({"4096x4096"})
    public String shape;

    @Param({"64"})
    public int rank;

    @Param({"3", "1"})
    public int powerIterations;

    private Matrix delta;
    private RowBlocks blocks;
    private RandomizedSvd.Result last;
    private double optimal;

    @Setup(Level.Trial)
    public void setUp() {
        int[] s = Synthetic.shape(shape);
        int m = s[0];
        int n = s[1];
        double[] sigma = new double[rank];
        for (int i = 0; i < rank; i++) {
            sigma[i] = 0.5 * Math.pow(0.97, i);
        }
        Matrix u = HouseholderQr.of(gaussian(m, rank, 1)).q();
        Matrix v = HouseholderQr.of(gaussian(n, rank, 2)).q();
        delta = new Svd(u, sigma, v.transpose()).reconstruct();
        Random r = new Random(3);
        double[] d = delta.data();
        for (int i = 0; i < d.length; i++) {
            d[i] += 1e-4 * r.nextGaussian();
        }
        // the exact optimum: ‖ΔW‖² minus its r largest squared singular values (the eigenvalues of the Gram matrix)
        int threads = Runtime.getRuntime().availableProcessors();
        try {
            SymmetricEigen eig = SymmetricEigen.of(Gram.of(delta, threads), threads);
            double top = 0;
            for (double l : eig.largest(rank)) {
                top += l;
            }
            double all = delta.frobeniusSquared();
            optimal = Math.sqrt((all - top) / all);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        int blockRows = Math.max(1, (4 << 20) / n);
        blocks = new RowBlocks() {
            @Override
            public int rows() {
                return m;
            }

            @Override
            public int cols() {
                return n;
            }

            @Override
            public void forEachBlock(Visitor visitor) throws IOException {
                double[] buf = new double[blockRows * n];
                for (int r0 = 0; r0 < m; r0 += blockRows) {
                    int count = Math.min(blockRows, m - r0);
                    System.arraycopy(d, r0 * n, buf, 0, count * n);
                    visitor.block(r0, count, buf);
                }
            }
        };
    }

    private static Matrix gaussian(int m, int n, long seed) {
        Random r = new Random(seed);
        Matrix g = Matrix.zeros(m, n);
        for (int i = 0; i < g.data().length; i++) {
            g.data()[i] = r.nextGaussian();
        }
        return g;
    }

    @Benchmark
    public RandomizedSvd.Result truncatedSvd() throws IOException {
        RandomizedSvd.Options o = new RandomizedSvd.Options(RandomizedSvd.Options.DEFAULT_OVERSAMPLING, powerIterations,
                RandomizedSvd.Options.DEFAULT_SEED, Runtime.getRuntime().availableProcessors());
        last = RandomizedSvd.truncated(blocks, rank, o);
        return last;
    }

    @TearDown(Level.Trial)
    public void report() {
        if (last != null) {
            System.out.printf("%n[SvdBenchmark] %s rank %d, %d power iterations: relative error %.6g, optimum %.6g, ratio %.5f%n",
                    shape, rank, powerIterations, last.relativeError(rank), optimal, last.relativeError(rank) / optimal);
        }
    }
}
