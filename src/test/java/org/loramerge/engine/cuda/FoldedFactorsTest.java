package org.loramerge.engine.cuda;

import java.math.BigDecimal;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Several terms on the GPU without a device: how the terms of a tensor split into row segments
 * (several adapters' terms on the same rows fold into one; an MoE expert stack's terms on disjoint
 * rows stay apart), what a folded term holds, that its fp64 product stays within the
 * add-and-round bound the kernel applies (against the exact sum of the original terms), and that
 * factors whose folding would leave the normal range of doubles keep the tensor on the CPU engine.
 */
class FoldedFactorsTest {
    @TempDir
    Path dir;

    private static LowRankTerm term(String name, double scale, int rank, long row0, int rows, int cols, SplittableRandom rnd) {
        double[] u = new double[rows * rank];
        double[] vt = new double[rank * cols];
        for (int i = 0; i < u.length; i++) {
            u[i] = (float) (rnd.nextGaussian() * 0.02); // F32 values, as an adapter's
        }
        for (int i = 0; i < vt.length; i++) {
            vt[i] = (float) (rnd.nextGaussian() * 0.05);
        }
        return new LowRankTerm(name, scale, rank, row0, rows, cols, u, vt);
    }

    @Test
    void termsOnTheSameRowsFormOneSegmentAndTermsOnDisjointRowsFormOneEach() {
        SplittableRandom rnd = new SplittableRandom(1);
        LowRankTerm a = term("a", 1, 2, 0, 10, 4, rnd);
        LowRankTerm b = term("b", 0.5, 3, 0, 10, 4, rnd);
        assertEquals(List.of(List.of(a, b)), CudaTensorMerge.segments(List.of(a, b), 10), "two adapters on every row: one segment");

        // an expert stack of 3 experts (4 rows each), combined from two adapters: 3 segments of 2 terms, in row order
        List<LowRankTerm> terms = new ArrayList<>();
        for (int adapter = 0; adapter < 2; adapter++) {
            for (int e = 2; e >= 0; e--) {
                terms.add(term("x" + adapter + e, 1, 2, 4L * e, 4, 4, rnd));
            }
        }
        List<List<LowRankTerm>> segments = CudaTensorMerge.segments(terms, 12);
        assertEquals(3, segments.size());
        for (int e = 0; e < 3; e++) {
            assertEquals(List.of(terms.get(2 - e), terms.get(5 - e)), segments.get(e), "expert " + e + ": adapter 0's term, then adapter 1's");
        }
    }

    @Test
    void termsThatOverlapInPartOrLeaveRowsUncoveredHaveNoSegments() {
        SplittableRandom rnd = new SplittableRandom(2);
        LowRankTerm all = term("all", 1, 2, 0, 8, 4, rnd);
        LowRankTerm firstHalf = term("half", 1, 2, 0, 4, 4, rnd);
        LowRankTerm secondHalf = term("half2", 1, 2, 4, 4, 4, rnd);
        assertNull(CudaTensorMerge.segments(List.of(all, firstHalf), 8), "a term on every row beside one on half of them");
        assertNull(CudaTensorMerge.segments(List.of(firstHalf), 8), "rows 4..7 without a term");
        assertEquals(2, CudaTensorMerge.segments(List.of(secondHalf, firstHalf), 8).size());
    }

    @Test
    void aFoldedTermHoldsEachScaledUSideBySideAndTheVsStacked() {
        SplittableRandom rnd = new SplittableRandom(3);
        LowRankTerm a = term("a", 16.0 / 3, 2, 8, 5, 7, rnd);
        LowRankTerm b = term("b", -0.3, 3, 8, 5, 7, rnd);
        LowRankTerm f = DeviceFactors.fold(List.of(a, b));
        assertEquals(5, f.rank());
        assertEquals(1.0, f.scale());
        assertEquals(8, f.row0(), "the segment's rows");
        for (int i = 0; i < 5; i++) {
            for (int k = 0; k < 2; k++) {
                assertEquals(a.scale() * a.u()[i * 2 + k], f.u()[i * 5 + k]);
            }
            for (int k = 0; k < 3; k++) {
                assertEquals(b.scale() * b.u()[i * 3 + k], f.u()[i * 5 + 2 + k]);
            }
        }
        double[] vt = new double[5 * 7];
        System.arraycopy(a.vt(), 0, vt, 0, 14);
        System.arraycopy(b.vt(), 0, vt, 14, 21);
        assertArrayEquals(vt, f.vt());
        LowRankTerm elsewhere = term("c", 1, 1, 0, 5, 7, rnd);
        assertThrows(IllegalArgumentException.class, () -> DeviceFactors.fold(List.of(a, elsewhere)), "terms on other rows do not fold");
    }

    /**
     * The GPU's sum for a folded segment, W + Σ_k U'_ik·V'_kj with U' = fl(s·U), each product and
     * sum rounded (in k order and in reverse: DGEMM may take any), against the exact W + Σ_t s_t·U_t·V_t:
     * within the kernel's bound K·(|v| + 2·‖U'_i‖·‖V'_j‖), K the job's, on rows where W cancels
     * most of the update and on rows where it does not.
     */
    @Test
    void theFoldedProductStaysWithinTheAddAndRoundBound() throws Exception {
        SplittableRandom rnd = new SplittableRandom(4);
        int rows = 40;
        int cols = 60;
        int[] ranks = {16, 8, 1, 32};
        double[] scales = {16.0 / 3, -0.7 * 2, 1e-3 / 3, 0.1 * Math.sqrt(2)};
        TensorFiles files = new TensorFiles().add("w", DType.F32, new long[] {rows, cols}, new double[rows * cols]);
        for (int t = 0; t < ranks.length; t++) {
            double[] av = new double[ranks[t] * cols];
            double[] bv = new double[rows * ranks[t]];
            for (int i = 0; i < av.length; i++) {
                av[i] = rnd.nextGaussian() * 0.05;
            }
            for (int i = 0; i < bv.length; i++) {
                bv[i] = rnd.nextGaussian() * 0.02;
            }
            files.add("a" + t, DType.F32, new long[] {ranks[t], cols}, av).add("b" + t, DType.F32, new long[] {rows, ranks[t]}, bv);
        }
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            List<TermSpec> specs = new ArrayList<>();
            for (int t = 0; t < ranks.length; t++) {
                specs.add(new TermSpec("m" + t, Layout.LINEAR, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t), ranks[t], scales[t]));
            }
            TensorJob job = TensorJob.prepare(OutputTensor.merge("w", DType.F32, TensorFiles.source(f, "w"), new OutputTensor.Update(specs, null, null)));
            assertEquals(4.0 * (57 + 4) * TensorJob.U, job.boundK(), "K counts every rank on the row");
            assertTrue(DeviceFactors.foldable(job.terms()));
            LowRankTerm folded = DeviceFactors.fold(job.terms());
            int r = folded.rank();
            double worst = 0;
            for (int i = 0; i < rows; i++) {
                for (int j = 0; j < cols; j++) {
                    BigDecimal delta = BigDecimal.ZERO;
                    for (LowRankTerm t : job.terms()) {
                        BigDecimal dot = BigDecimal.ZERO;
                        for (int k = 0; k < t.rank(); k++) {
                            dot = dot.add(new BigDecimal(t.u()[i * t.rank() + k]).multiply(new BigDecimal(t.vt()[k * cols + j])));
                        }
                        delta = delta.add(new BigDecimal(t.scale()).multiply(dot));
                    }
                    // odd rows: W cancels the update to about 2^-20 of it, so the bound's product term carries it
                    double w = i % 2 == 0 ? (float) (rnd.nextGaussian() * 0.02) : (float) -delta.doubleValue();
                    BigDecimal exact = new BigDecimal(w).add(delta);
                    for (boolean reversed : new boolean[] {false, true}) {
                        double p = 0;
                        for (int kk = 0; kk < r; kk++) {
                            int k = reversed ? r - 1 - kk : kk;
                            p += folded.u()[i * r + k] * folded.vt()[k * cols + j];
                        }
                        double v = w + p;
                        double e = job.boundK() * (Math.abs(v) + 2 * folded.uNorm(i) * folded.vNorms()[j]);
                        double err = new BigDecimal(v).subtract(exact).abs().doubleValue();
                        assertTrue(err <= e, "element (" + i + ", " + j + "): error " + err + " above the bound " + e);
                        worst = Math.max(worst, err / e);
                    }
                }
            }
            assertTrue(worst > 0, "the folded sums are not all exact: the test measures something");
        }
    }

    @Test
    void factorsWhoseFoldingLeavesTheNormalRangeStayOnTheCpu() {
        SplittableRandom rnd = new SplittableRandom(5);
        LowRankTerm a = term("a", 2.0, 4, 0, 6, 5, rnd);
        assertTrue(DeviceFactors.foldable(List.of(a, term("b", 0.3, 2, 0, 6, 5, rnd))), "ordinary weights fold");
        assertTrue(DeviceFactors.foldable(List.of(term("one", 1e-300, 2, 0, 6, 5, rnd))), "one term is never folded, so never refused");
        assertFalse(DeviceFactors.foldable(List.of(a, term("tiny", 1e-300, 2, 0, 6, 5, rnd))), "s·U would be subnormal");
        assertFalse(DeviceFactors.foldable(List.of(a, term("small", 1e-160, 2, 0, 6, 5, rnd))), "s·U's square in ‖U'‖ would underflow");
        assertFalse(DeviceFactors.foldable(List.of(a, term("huge", 1e300, 2, 0, 6, 5, rnd))), "s·U·V would near overflow");
        double[] nan = new double[6 * 2];
        nan[3] = Double.NaN;
        assertFalse(DeviceFactors.foldable(List.of(a, new LowRankTerm("nan", 1, 2, 0, 6, 5, nan, new double[2 * 5]))), "a NaN factor");
    }

    @Test
    void combinedTermsGoToTheGpuUnlessTheirFoldingLeavesTheNormalRange() throws Exception {
        SplittableRandom rnd = new SplittableRandom(6);
        int rows = 16;
        int cols = 24;
        TensorFiles files = new TensorFiles().add("w", DType.BF16, new long[] {rows, cols}, CudaBackendTest.gaussian(rnd, rows * cols, 0.02));
        for (int t = 0; t < 2; t++) {
            files.add("a" + t, DType.F32, new long[] {4, cols}, CudaBackendTest.gaussian(rnd, 4 * cols, 0.05));
            files.add("b" + t, DType.F32, new long[] {rows, 4}, CudaBackendTest.gaussian(rnd, rows * 4, 0.02));
        }
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            for (double weight : new double[] {0.7, 1e-300}) {
                List<TermSpec> specs = new ArrayList<>();
                for (int t = 0; t < 2; t++) {
                    specs.add(new TermSpec("m" + t, Layout.LINEAR, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t), 4,
                            (t == 0 ? 1 : weight) * 2.0));
                }
                TensorJob job = TensorJob.prepare(OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"), new OutputTensor.Update(specs, null, null)));
                assertEquals(weight == 0.7, CudaBackend.onGpu(job), "weight " + weight);
            }
        }
    }
}
