package org.loramerge.engine;

import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.testutil.DenseBoundaryCase;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A dense combination's W + Δ (the task-arithmetic family, Δ a float64 by definition) next to a
 * rounding boundary: the elements the bound cannot decide are settled from the exact W + Δ, in
 * expansion arithmetic, never from W alone or from the float64 sum ({@link DenseBoundaryCase}).
 */
class DenseRoundingBoundaryTest {
    @TempDir
    Path dir;

    @Test
    void denseCombinationsNextToARoundingBoundaryRoundTheExactSumOfWAndDelta() throws Exception {
        try (SafetensorsFile f = DenseBoundaryCase.write(dir.resolve("t.safetensors"))) {
            TensorJob job = TensorJob.prepare(DenseBoundaryCase.output(f));
            int bytes = DenseBoundaryCase.ROWS * DenseBoundaryCase.COLS * 2;
            ByteBuffer out = ByteBuffer.allocateDirect(bytes).order(ByteOrder.LITTLE_ENDIAN);
            BlockStats stats = new BlockStats();
            try (CpuBackend cpu = new CpuBackend(1); TensorMerge m = cpu.openMerge(job); MappedRegion src = f.map(f.tensor("w"), 0, bytes)) {
                m.mergeRows(0, DenseBoundaryCase.ROWS, src.bytes(), out, stats);
            }
            for (int e = 0; e < DenseBoundaryCase.EXPECTED.length; e++) {
                assertEquals(DenseBoundaryCase.EXPECTED[e], FloatFormat.BF16.decode(FloatFormat.BF16.bitsAt(out, e)),
                        "element " + e + " of W + Δ");
            }
            // the six elements whose float64 sum is a midpoint (columns 0 to 2) were decided exactly, without decimal arithmetic
            assertEquals(6, stats.exactlyRounded(), "elements settled by expansion arithmetic");
            assertEquals(0, stats.exactFallbacks(), "elements settled in decimal arithmetic");
        }
    }

    @Test
    void theExactRounderTakesWPlusDeltaAsTheDecimalReferenceDoes() throws Exception {
        try (SafetensorsFile f = DenseBoundaryCase.write(dir.resolve("t.safetensors"))) {
            TensorJob job = TensorJob.prepare(DenseBoundaryCase.output(f));
            ExactMath.Rounder rounder = new ExactMath.Rounder();
            for (int i = 0; i < DenseBoundaryCase.ROWS; i++) {
                double[] w = job.readSourceRow(i);
                for (int j = 0; j < DenseBoundaryCase.COLS; j++) {
                    BigDecimal exact = ExactMath.plain(job, w[j], i, j);
                    assertEquals(new BigDecimal(w[j]).add(new BigDecimal(job.dense().deltaAt(i, j))), exact, "the decimal reference is W + Δ");
                    double y = rounder.round(job, w, i, j, FloatFormat.BF16);
                    assertTrue(!rounder.lastWasDecimal(), "W + Δ is two doubles: no decimal arithmetic");
                    assertEquals(ExactMath.round(exact, FloatFormat.BF16), y, "element (" + i + ", " + j + ")");
                    assertEquals(DenseBoundaryCase.EXPECTED[i * DenseBoundaryCase.COLS + j], y, "element (" + i + ", " + j + ")");
                }
            }
        }
    }
}
