package org.loramerge.engine;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The task-arithmetic family's building blocks on large tensors: the top-D selection keeps exactly
 * floor(D·n) elements, the largest, ties to the lower index (against a sort); DARE keeps about D
 * of the elements and rescales them by exactly 1/D; its masks depend only on the seed, the tensor,
 * the adapter and the element.
 */
class DenseCombinationTest {
    @TempDir
    Path dir;

    /** One rank-r adapter on a [rows, cols] weight, with the given stored factors, as a one-part combined update. */
    private CombinedUpdate update(SafetensorsFile f, Combination how, int parts, int rank) {
        List<CombinedUpdate.Part> list = new ArrayList<>();
        for (int p = 0; p < parts; p++) {
            TermSpec t = new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a" + p), TensorFiles.source(f, "b" + p), rank, 1.0);
            list.add(new CombinedUpdate.Part(p, t, how.weight(p)));
        }
        return new CombinedUpdate(how, "w", "m", list);
    }

    private static Combination how(CombineMethod m, int parts, double density, long seed) throws Exception {
        return Combination.of(m, parts, null, density, Combination.MajoritySign.TOTAL, 1.0, seed, 0, null);
    }

    @ParameterizedTest(name = "density {0}, {1} levels")
    @CsvSource({"0.3, 0", "0.5, 7", "0.01, 0", "0.999, 3", "0.25, 1"})
    void magnitudeSelectionKeepsExactlyTheLargestWithTiesToTheLowerIndex(double density, int levels) throws Exception {
        int rows = 300;
        int cols = 200;
        int rank = 2;
        SplittableRandom rnd = new SplittableRandom(42 + levels);
        double[] a = new double[rank * cols];
        double[] b = new double[rows * rank];
        for (int i = 0; i < a.length; i++) {
            // levels > 0: few distinct values, so long runs of equal magnitudes straddle the cut
            a[i] = levels > 0 ? (rnd.nextInt(levels) - levels / 2) * 0.25 : rnd.nextGaussian();
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = levels > 0 ? (i % rank == 0 ? 1 : 0) : rnd.nextGaussian();
        }
        try (SafetensorsFile f = new TensorFiles().add("a0", DType.F32, new long[] {rank, cols}, a).add("b0", DType.F32, new long[] {rows, rank}, b)
                .write(dir.resolve("t.safetensors"))) {
            DenseCombination d = DenseCombination.load(update(f, how(CombineMethod.MAGNITUDE_PRUNE, 1, density, 0), 1, rank), rows, cols);
            d.selectAll(rows);
            double[] full = new double[rows * cols];
            double[] row = new double[cols];
            for (int i = 0; i < rows; i++) {
                d.partDelta(0, i, row);
                System.arraycopy(row, 0, full, i * cols, cols);
            }
            Integer[] order = new Integer[full.length];
            for (int i = 0; i < order.length; i++) {
                order[i] = i;
            }
            Arrays.sort(order, Comparator.comparingDouble((Integer i) -> -Math.abs(full[i])).thenComparingInt(i -> i));
            long k = (long) (density * full.length);
            boolean[] expected = new boolean[full.length];
            for (int i = 0; i < k; i++) {
                expected[order[i]] = true;
            }
            long kept = 0;
            for (int i = 0; i < rows; i++) {
                d.deltaRow(i, row);
                for (int j = 0; j < cols; j++) {
                    int e = i * cols + j;
                    boolean keptHere = expected[e] ? row[j] == full[e] : row[j] == 0;
                    assertTrue(keptHere, "element " + e + " (|x| " + Math.abs(full[e]) + ") " + (expected[e] ? "must be kept" : "must be dropped"));
                    if (expected[e]) {
                        kept++;
                    }
                }
            }
            assertEquals(k, kept);
            assertEquals(k, d.selection(0).kept());
        }
    }

    @Test
    void dareKeepsAboutDensityOfALargeTensorAndRescalesByExactlyOneOverDensity() throws Exception {
        int rows = 1000;
        int cols = 1000;
        double density = 0.3;
        double[] ones = new double[cols];
        Arrays.fill(ones, 1.0);
        double[] onesB = new double[rows];
        Arrays.fill(onesB, 1.0);
        try (SafetensorsFile f = new TensorFiles().add("a0", DType.F32, new long[] {1, cols}, ones).add("b0", DType.F32, new long[] {rows, 1}, onesB)
                .write(dir.resolve("t.safetensors"))) {
            DenseCombination d = DenseCombination.load(update(f, how(CombineMethod.DARE_LINEAR, 1, density, 1234), 1, 1), rows, cols);
            double[] row = new double[cols];
            long kept = 0;
            for (int i = 0; i < rows; i++) {
                d.deltaRow(i, row);
                for (double v : row) {
                    if (v != 0) {
                        assertEquals(1.0 / density, v, 0.0, "a kept value is ΔW / D");
                        kept++;
                    }
                }
            }
            double n = (double) rows * cols;
            double sigma = Math.sqrt(n * density * (1 - density));
            assertTrue(Math.abs(kept - density * n) < 5 * sigma, "kept " + kept + " of " + (long) n + " at density " + density);
        }
    }

    @Test
    void dareMasksDependOnlyOnSeedTensorAdapterAndElement() {
        long key = DareMask.key(7, "model.layers.0.mlp.up_proj.weight", 2);
        assertEquals(key, DareMask.key(7, "model.layers.0.mlp.up_proj.weight", 2), "the same key every time");
        long[] others = {DareMask.key(8, "model.layers.0.mlp.up_proj.weight", 2), DareMask.key(7, "model.layers.1.mlp.up_proj.weight", 2),
                DareMask.key(7, "model.layers.0.mlp.up_proj.weight", 1)};
        int n = 100_000;
        for (long other : others) {
            int differ = 0;
            for (int e = 0; e < n; e++) {
                if (DareMask.keep(key, e, 0.5) != DareMask.keep(other, e, 0.5)) {
                    differ++;
                }
            }
            // independent masks at D = 0.5 differ in half the elements
            assertTrue(Math.abs(differ - n / 2.0) < 5 * Math.sqrt(n / 4.0), "another seed, tensor or adapter gives another mask: " + differ);
        }
        // the uniform numbers are those of the documented formula (docs/FORMATS.md §8), spot-checked
        assertEquals((DareMask.mix(key + 5 * DareMask.GAMMA) >>> 11) * 0x1p-53, DareMask.uniform(key, 4), 0.0);
        assertFalse(DareMask.uniform(key, 0) == DareMask.uniform(key, 1));
    }

    @Test
    void theSplitMix64OutputFunctionIsTheReferenceOne() {
        // SplitMix64 seeded with 0: its first outputs are mix(γ), mix(2γ), ... (the reference generator's published values)
        assertEquals(0xE220A8397B1DCDAFL, DareMask.mix(DareMask.GAMMA));
        assertEquals(0x6E789E6AA1B965F4L, DareMask.mix(2 * DareMask.GAMMA));
        assertEquals(0xaf63dc4c8601ec8cL, DareMask.fnv1a64("a"), "FNV-1a 64 of \"a\" (the published test vector)");
    }

    @Test
    void atDensityOneDareDropsNothing() throws Exception {
        int rows = 40;
        int cols = 30;
        SplittableRandom rnd = new SplittableRandom(5);
        TensorFiles files = new TensorFiles();
        for (int p = 0; p < 3; p++) {
            files.add("a" + p, DType.F32, new long[] {2, cols}, rnd.doubles(2L * cols).map(x -> x - 0.5).toArray());
            files.add("b" + p, DType.F32, new long[] {rows, 2}, rnd.doubles(rows * 2L).map(x -> x - 0.5).toArray());
        }
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            DenseCombination dareTies = DenseCombination.load(update(f, how(CombineMethod.DARE_TIES, 3, 1.0, 99), 3, 2), rows, cols);
            DenseCombination ties = DenseCombination.load(update(f, how(CombineMethod.TIES, 3, 1.0, 0), 3, 2), rows, cols);
            DenseCombination dareLinear = DenseCombination.load(update(f, how(CombineMethod.DARE_LINEAR, 3, 1.0, 99), 3, 2), rows, cols);
            DenseCombination prune = DenseCombination.load(update(f, how(CombineMethod.MAGNITUDE_PRUNE, 3, 1.0, 0), 3, 2), rows, cols);
            double[] x = new double[cols];
            double[] y = new double[cols];
            for (int i = 0; i < rows; i++) {
                dareTies.deltaRow(i, x);
                ties.deltaRow(i, y);
                assertArrayEquals(y, x, 0.0, "dare_ties at D = 1 is ties at D = 1");
                dareLinear.deltaRow(i, x);
                prune.deltaRow(i, y);
                assertArrayEquals(y, x, 0.0, "dare_linear at D = 1 is the weighted sum");
            }
        }
    }
}
