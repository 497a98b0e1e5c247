package org.loramerge.engine;

import java.math.BigDecimal;
import java.math.MathContext;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.DoraSpec;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The CPU merge against an independent exact reference, over layouts, dtypes, ranks and DoRA. */
class CpuMergeTest {
    @TempDir
    Path dir;

    static Stream<Arguments> cases() {
        return Stream.of(
                Arguments.of(Layout.LINEAR, DType.BF16, DType.BF16, 13, 7, 3, false),
                Arguments.of(Layout.LINEAR, DType.F16, DType.F16, 9, 17, 1, false),
                Arguments.of(Layout.LINEAR, DType.F32, DType.F32, 11, 5, 8, false),
                Arguments.of(Layout.LINEAR, DType.BF16, DType.F32, 6, 10, 4, false),
                Arguments.of(Layout.LINEAR, DType.F32, DType.BF16, 6, 10, 4, false),
                Arguments.of(Layout.CONV1D, DType.BF16, DType.BF16, 12, 5, 2, false),
                Arguments.of(Layout.EMBEDDING, DType.F16, DType.F16, 20, 6, 3, false),
                Arguments.of(Layout.LINEAR, DType.BF16, DType.BF16, 7, 9, 3, true),
                Arguments.of(Layout.LINEAR, DType.F32, DType.F32, 7, 9, 5, true),
                Arguments.of(Layout.CONV1D, DType.F16, DType.F16, 8, 6, 2, true),
                Arguments.of(Layout.EMBEDDING, DType.BF16, DType.BF16, 15, 4, 3, true));
    }

    @ParameterizedTest(name = "{0} {1}->{2} {3}x{4} r{5} dora={6}")
    @MethodSource("cases")
    void matchesExactReference(Layout layout, DType baseType, DType outType, int rows, int cols, int rank, boolean dora) throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 31L + cols * 7L + rank);
        double[] w = gaussian(rnd, rows * cols, 0.05);
        // factors stored as PEFT stores them for each layout
        long[] aShape;
        long[] bShape;
        switch (layout) {
            case CONV1D: aShape = new long[] {rank, rows}; bShape = new long[] {cols, rank}; break;
            case EMBEDDING: aShape = new long[] {rank, rows}; bShape = new long[] {cols, rank}; break;
            default: aShape = new long[] {rank, cols}; bShape = new long[] {rows, rank};
        }
        double[] a = gaussian(rnd, (int) (aShape[0] * aShape[1]), 0.3);
        double[] b = gaussian(rnd, (int) (bShape[0] * bShape[1]), 0.05);
        boolean byRow = layout == Layout.LINEAR;
        double[] m = gaussian(rnd, byRow ? rows : cols, 1.0);
        double scale = 7.0 / 3.0;
        TensorFiles files = new TensorFiles()
                .add("w", baseType, new long[] {rows, cols}, w)
                .add("a", DType.F32, aShape, a)
                .add("b", DType.F32, bShape, b)
                .add("m", DType.F32, new long[] {m.length}, m);
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            TermSpec term = new TermSpec("x", layout, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, scale);
            DoraSpec doraSpec = dora ? new DoraSpec(byRow ? DoraSpec.Axis.ROW : DoraSpec.Axis.COLUMN, TensorFiles.source(f, "m")) : null;
            OutputTensor out = OutputTensor.merge("w", outType, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), doraSpec, null));
            int[] got = merge(out);
            // the reference, from the stored (rounded) values
            double[] ws = stored(f, "w");
            double[] as = stored(f, "a");
            double[] bs = stored(f, "b");
            double[] ms = stored(f, "m");
            BigDecimal[][] v = new BigDecimal[rows][cols];
            for (int i = 0; i < rows; i++) {
                for (int j = 0; j < cols; j++) {
                    BigDecimal dot = BigDecimal.ZERO;
                    for (int k = 0; k < rank; k++) {
                        double x;
                        double y;
                        if (layout == Layout.LINEAR) {
                            x = bs[i * rank + k];
                            y = as[k * cols + j];
                        } else {
                            // ΔW = (B·A)ᵀ: ΔW[i,j] = Σ_k B[j,k]·A[k,i]
                            x = bs[j * rank + k];
                            y = as[k * rows + i];
                        }
                        dot = dot.add(new BigDecimal(x).multiply(new BigDecimal(y)));
                    }
                    v[i][j] = new BigDecimal(ws[i * cols + j]).add(new BigDecimal(scale).multiply(dot));
                }
            }
            MathContext mc = new MathContext(100);
            for (int i = 0; i < rows; i++) {
                for (int j = 0; j < cols; j++) {
                    BigDecimal x = v[i][j];
                    if (dora) {
                        BigDecimal ss = BigDecimal.ZERO;
                        int n = byRow ? cols : rows;
                        for (int t = 0; t < n; t++) {
                            BigDecimal e = byRow ? v[i][t] : v[t][j];
                            ss = ss.add(e.multiply(e));
                        }
                        x = x.multiply(new BigDecimal(ms[byRow ? i : j])).divide(ss.sqrt(mc), mc);
                    }
                    int expected = ExactReference.roundBits(x, outType);
                    assertEquals(Integer.toHexString(expected), Integer.toHexString(got[i * cols + j]), "element " + i + "," + j);
                }
            }
        }
    }

    @Test
    void elementsOnARoundingMidpointTakeTheExactPath() throws Exception {
        // W = 1, ΔW = 2^-8 is exactly half a BF16 ulp above 1: ties to even (1.0); ΔW = 2^-8 + 2^-60 rounds up
        double[] w = {1.0, 1.0, 1.0, -3.0};
        double[] a = {0x1p-8, 0x1p-8, 0x1p-8, 0x1p-6, 0, 0x1p-60, -0x1p-60, 0};
        double[] b = {1, 1, 1, 1, 1, 1, 1, 1};
        TensorFiles files = new TensorFiles()
                .add("w", DType.BF16, new long[] {1, 4}, w)
                .add("a", DType.F32, new long[] {2, 4}, a)
                .add("b", DType.F32, new long[] {1, 2}, new double[] {1, 1})
                .add("unused", DType.F32, new long[] {8}, b);
        try (SafetensorsFile f = files.write(dir.resolve("mid.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), 2, 1.0);
            OutputTensor out = OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), null, null));
            BlockStats stats = new BlockStats();
            int[] got = merge(out, stats);
            FloatFormat bf = FloatFormat.BF16;
            assertEquals(1.0, bf.decode(got[0]), "tie to even");
            assertEquals(1.0 + 0x1p-7, bf.decode(got[1]), "just above the midpoint rounds up");
            assertEquals(1.0, bf.decode(got[2]), "just below the midpoint rounds down");
            assertEquals(-3.0 + 0x1p-6, bf.decode(got[3]), "an exact sum stays");
            assertTrue(stats.exactlyRounded() >= 3, "the three midpoint cases were decided exactly, got " + stats.exactlyRounded());
            assertEquals(0, stats.exactFallbacks(), "without decimal arithmetic");
        }
    }

    @Test
    void f16OverflowIsCounted() throws Exception {
        TensorFiles files = new TensorFiles()
                .add("w", DType.F16, new long[] {1, 2}, new double[] {65000, 1})
                .add("a", DType.F32, new long[] {1, 2}, new double[] {1000, 1})
                .add("b", DType.F32, new long[] {1, 1}, new double[] {1});
        try (SafetensorsFile f = files.write(dir.resolve("of.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), 1, 1.0);
            OutputTensor out = OutputTensor.merge("w", DType.F16, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), null, null));
            BlockStats stats = new BlockStats();
            int[] got = merge(out, stats);
            assertEquals(0x7C00, got[0], "65000 + 1000 overflows F16 to +Inf");
            assertEquals(2.0, FloatFormat.F16.decode(got[1]));
            assertEquals(1, stats.overflows());
        }
    }

    private int[] merge(OutputTensor out) throws Exception {
        return merge(out, new BlockStats());
    }

    private int[] merge(OutputTensor out, BlockStats stats) throws Exception {
        TensorJob job = TensorJob.prepare(out);
        int rows = (int) job.rows();
        int cols = job.cols();
        FloatFormat in = job.srcFormat();
        long srcBytes = (long) rows * cols * in.sizeInBytes();
        try (MappedRegion r = out.source().file().map(out.source().info(), 0, srcBytes)) {
            if (job.needsColumnPass()) {
                double[] sumSq = new double[cols];
                double[] sumErr = new double[cols];
                CpuMerge.columnSums(job, 0, rows, r.bytes(), sumSq, sumErr);
                job.finishColumnNorms(sumSq, sumErr);
            }
            ByteBuffer dst = ByteBuffer.allocate(rows * cols * job.dstFormat().sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
            CpuMerge.mergeRows(job, 0, rows, r.bytes(), dst, stats, null);
            int[] bits = new int[rows * cols];
            for (int i = 0; i < bits.length; i++) {
                bits[i] = job.dstFormat().bitsAt(dst, i);
            }
            return bits;
        }
    }

    private static double[] stored(SafetensorsFile f, String name) throws Exception {
        return TensorFiles.source(f, name).readDoubles();
    }

    static double[] gaussian(SplittableRandom rnd, int n, double std) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            double u1 = rnd.nextDouble();
            double u2 = rnd.nextDouble();
            v[i] = std * Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2);
        }
        return v;
    }
}
