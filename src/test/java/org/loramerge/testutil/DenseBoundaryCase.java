package org.loramerge.testutil;

import java.nio.file.Path;
import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TermSpec;

/**
 * A dense combination (dare_linear at D = 1 of two rank-1 adapters, weights 1 and 1, λ = 1) on a
 * BF16 weight [2, 4] whose W + Δ lies on, or 2^-60 beside, a BF16 rounding boundary, with Δ an
 * exact float64 (2^-8 ± 2^-60 spans 53 bits). Row 0 has W = 1, row 1 W = 1 + 2^-7 (odd in BF16);
 * the midpoint above each is W + 2^-8, which the float64 sum W + Δ lands on exactly, so only an
 * exact decision of W + Δ rounds it right. {@link #EXPECTED} is the correctly rounded exact value,
 * worked out by hand:
 *
 * <pre>
 *   column        Δ              row 0 (W = 1)          row 1 (W = 1 + 2^-7)
 *   0        2^-8 + 2^-60   above the midpoint: 1 + 2^-7    above: 1 + 2^-6
 *   1        2^-8 - 2^-60   below: 1                        below: 1 + 2^-7
 *   2        2^-8           a tie: even, 1                  a tie: even, 1 + 2^-6
 *   3        2^-60          far from one: 1                 1 + 2^-7
 * </pre>
 */
public final class DenseBoundaryCase {
    public static final int ROWS = 2;
    public static final int COLS = 4;
    private static final double P8 = 0x1p-8;
    private static final double P60 = 0x1p-60;
    private static final double W1 = 1 + 0x1p-7;
    /** The expected merged values, row-major. */
    public static final double[] EXPECTED = {
        1 + 0x1p-7, 1, 1, 1,
        1 + 0x1p-6, W1, 1 + 0x1p-6, W1,
    };

    private DenseBoundaryCase() {
    }

    /** Writes the weight and the factors into {@code file} and returns it opened. */
    public static SafetensorsFile write(Path file) throws Exception {
        return new TensorFiles()
                .add("w", DType.BF16, new long[] {ROWS, COLS}, new double[] {1, 1, 1, 1, W1, W1, W1, W1})
                // adapter 0: ΔW_0[i, j] = 1·a0[j]; adapter 1: ΔW_1[i, j] = 1·a1[j]
                .add("a0", DType.F32, new long[] {1, COLS}, new double[] {P8, P8, P8, 0})
                .add("b0", DType.F32, new long[] {ROWS, 1}, new double[] {1, 1})
                .add("a1", DType.F32, new long[] {1, COLS}, new double[] {P60, -P60, 0, P60})
                .add("b1", DType.F32, new long[] {ROWS, 1}, new double[] {1, 1})
                .write(file);
    }

    /** The output tensor: W merged with the dense combination of the two adapters. */
    public static OutputTensor output(SafetensorsFile f) throws Exception {
        Combination how = Combination.of(CombineMethod.DARE_LINEAR, 2, List.of(1.0, 1.0), 1.0, Combination.MajoritySign.TOTAL, 1.0, 7, 0, null);
        List<CombinedUpdate.Part> parts = List.of(
                new CombinedUpdate.Part(0, new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a0"), TensorFiles.source(f, "b0"), 1, 1.0), 1.0),
                new CombinedUpdate.Part(1, new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a1"), TensorFiles.source(f, "b1"), 1, 1.0), 1.0));
        return OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"),
                new OutputTensor.Update(List.of(), null, null, new CombinedUpdate(how, "w", "m", parts)));
    }
}
