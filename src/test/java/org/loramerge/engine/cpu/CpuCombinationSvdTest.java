package org.loramerge.engine.cpu;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.CombinationDeltas;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.FactorCombination;
import org.loramerge.engine.HostCombinedDelta;
import org.loramerge.engine.WeightDelta;
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
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * The seam through which the {@code _svd} methods' dense Δ reaches an engine, on the CPU: the CPU
 * backend hands out the host's handle, whose rows are the dense combination's after its top-D
 * selection and whose ‖Δ‖² is theirs; the factors combined through the backend are those of
 * {@code TensorJob.prepare} without one, bit for bit.
 */
class CpuCombinationSvdTest {
    @TempDir
    Path dir;

    /** Three rank-4 adapters of a Linear [rows, cols], combined by ties_svd at D = 0.4 and rank 5. */
    private CombinedUpdate update(SafetensorsFile[] keep, int rows, int cols) throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 17L + cols);
        TensorFiles files = new TensorFiles();
        for (int t = 0; t < 3; t++) {
            double[] a = new double[4 * cols];
            double[] b = new double[rows * 4];
            for (int i = 0; i < a.length; i++) {
                a[i] = rnd.nextDouble() - 0.5;
            }
            for (int i = 0; i < b.length; i++) {
                b[i] = (rnd.nextDouble() - 0.5) * 0.1;
            }
            files.add("a" + t, DType.F32, new long[] {4, cols}, a).add("b" + t, DType.F32, new long[] {rows, 4}, b);
        }
        SafetensorsFile f = files.write(dir.resolve("t.safetensors"));
        keep[0] = f;
        List<Double> weights = List.of(0.7, -0.4, 1.2);
        List<CombinedUpdate.Part> parts = new ArrayList<>();
        for (int t = 0; t < 3; t++) {
            parts.add(new CombinedUpdate.Part(t, new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t), 4,
                    1.5), weights.get(t)));
        }
        Combination how = Combination.of(CombineMethod.TIES_SVD, 3, weights, 0.4, Combination.MajoritySign.TOTAL, 1.0, 0, 5, null);
        return new CombinedUpdate(how, "w", "m", parts);
    }

    @Test
    void theCpuBackendOpensTheHostsDeltaWithTheCombinationsRowsAndNorm() throws Exception {
        SafetensorsFile[] file = new SafetensorsFile[1];
        CombinedUpdate u = update(file, 90, 70);
        try (SafetensorsFile f = file[0]; CpuBackend cpu = new CpuBackend(2); WeightDelta d = cpu.openCombination(DenseCombination.load(u, 90, 70), 90, 70)) {
            HostCombinedDelta host = assertInstanceOf(HostCombinedDelta.class, d);
            assertEquals("cpu", d.device());
            DenseCombination expected = DenseCombination.load(u, 90, 70);
            expected.selectAll(90);
            double[] row = new double[70];
            double[] sum = {0};
            host.forEachBlock((row0, n, values) -> {
                for (int i = 0; i < n; i++) {
                    expected.deltaRow(row0 + i, row);
                    double[] got = new double[70];
                    System.arraycopy(values, i * 70, got, 0, 70);
                    assertArrayEquals(row, got, "row " + (row0 + i));
                    for (double v : row) {
                        sum[0] += v * v;
                    }
                }
            });
            assertEquals(sum[0], d.deltaSquared(), 1e-12 * sum[0]);
        }
    }

    @Test
    void factorsCombinedThroughTheCpuBackendAreThoseOfTheHostBitForBit() throws Exception {
        SafetensorsFile[] file = new SafetensorsFile[1];
        CombinedUpdate u = update(file, 120, 64);
        try (SafetensorsFile f = file[0]; CpuBackend cpu = new CpuBackend(4)) {
            FactorCombination.Factors host = FactorCombination.combine(u, CombinationDeltas.HOST);
            FactorCombination.Factors engine = FactorCombination.combine(u, cpu::openCombination);
            assertEquals(5, engine.rank());
            assertArrayEquals(host.a(), engine.a());
            assertArrayEquals(host.b(), engine.b());
        }
    }

    @Test
    void aCombinationOpenedWithTheWrongWidthIsACallersBug() throws Exception {
        SafetensorsFile[] file = new SafetensorsFile[1];
        CombinedUpdate u = update(file, 40, 30);
        try (SafetensorsFile f = file[0]) {
            DenseCombination d = DenseCombination.load(u, 40, 30);
            assertThrows(IllegalArgumentException.class, () -> HostCombinedDelta.open(d, 30, 40));
        }
    }
}
