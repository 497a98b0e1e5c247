package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.BnbInt8Format;
import org.loramerge.quant.CudaFastMath;
import org.loramerge.quant.Fp8Output;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.PackedIntWeight;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedOutput;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * kernels/quant.cu built for the host by gcc (kernels/test/quant_host.cpp, CUDA's environment
 * stood in for by kernels/test/host/) and run on row blocks of the random weights of
 * {@link RandomQuantizedWeights}, staged as DeviceDequantizer stages them: every kernel writes the
 * CPU codec's bytes, and nothing past its block, with the launch's grid and with a grid of one
 * block (every grid-stride loop turning). The requantization kernels (fp8_requant, int8_requant)
 * likewise on random merged blocks of those FP8 and 8-bit weights ({@link #writeRequantCases}),
 * against the CPU requantizers: codes and scales exactly, survival sums to 1e-12; and for a weight with
 * one scale for the whole tensor, the same through fp8_tensor_stage (in blocks of 7 rows, last first)
 * and fp8_tensor_requant. What the kernels compute is so checked on any machine
 * with g++; that the GPU runs them the same way, CudaQuantTest checks there. Skips without g++.
 */
class QuantKernelsOnHostTest {
    @TempDir
    Path dir;

    @Test
    void quantKernelsBuiltForTheHostWriteTheCpuCodecsBytes() throws Exception {
        assumeTrue(run(dir, "g++", "--version").exit() == 0, "no g++ here");
        Path exe = dir.resolve("quant_host");
        HostCommand.Result built = run(dir, "g++", "-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
                "-I" + Path.of("kernels/test/host").toAbsolutePath(), "-I" + Path.of("kernels").toAbsolutePath(), "-o", exe.toString(),
                Path.of("kernels/test/quant_host.cpp").toAbsolutePath().toString());
        assertEquals(0, built.exit(), built.output());
        Path cases = dir.resolve("cases");
        int count = writeRequantCases(cases, writeCases(cases));
        for (String grid : new String[] {"0", "1"}) {
            HostCommand.Result r = run(dir, exe.toString(), cases.toString(), String.valueOf(count), grid);
            assertEquals(0, r.exit(), r.output());
            assertTrue(r.output().endsWith(count + " cases, 0 failures\n"), r.output());
        }
    }

    /** Each random weight whole and in its first four blocks of 7 rows; returns the number of cases. */
    private int writeCases(Path root) throws Exception {
        int id = 0;
        for (RandomQuantizedWeights.Spec spec : RandomQuantizedWeights.specs()) {
            Path model = RandomQuantizedWeights.write(dir.resolve("model-" + id), spec);
            try (Checkpoint c = Checkpoint.open(model)) {
                QuantizedWeight w = WeightFormats.detect(c).weight(RandomQuantizedWeights.WEIGHT);
                int rows = spec.rows();
                int cols = spec.cols();
                FloatFormat out = FloatFormat.of(w.dtype());
                ByteBuffer expected = ByteBuffer.allocate(rows * cols * out.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                w.dequantizeTo(0, rows * cols, expected);
                for (int[] block : new int[][] {{0, rows}, {0, 7}, {7, 7}, {14, 7}, {21, 7}}) {
                    int row0 = block[0];
                    int n = Math.min(block[1], rows - row0);
                    Path d = root.resolve(String.valueOf(id++));
                    Files.createDirectories(d);
                    Files.writeString(d.resolve("meta.txt"), stage(w, out, row0, n, d) + "\n");
                    byte[] want = new byte[n * cols * out.sizeInBytes()];
                    expected.get(row0 * cols * out.sizeInBytes(), want);
                    Files.write(d.resolve("expected.bin"), want);
                }
            }
        }
        return id;
    }

    /**
     * Requantization cases from {@code id} on: for each FP8 and 8-bit random weight, random merged
     * values X and base values W in its dtype (magnitudes spread over many binades per block, an
     * all-zero quantization block or row, e4m3 rounding ties and subnormal codes, values whose
     * scaled product saturates past 448, shapes that end in partial 128 x 128 blocks) and P, whole
     * and in its first three bands of quantization blocks (or of 7 rows); and blocks with a value the format cannot take (NaN,
     * infinity, past fp16), which the CPU refuses. Returns the next id.
     */
    private int writeRequantCases(Path root, int id) throws Exception {
        ByteBuffer table = ByteBuffer.allocate(4 << 18).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : CudaFastMath.reciprocalTable()) {
            table.putInt(v);
        }
        Files.createDirectories(root);
        Files.write(root.resolve("rcp_table.bin"), table.array());
        int model = 0;
        for (RandomQuantizedWeights.Spec spec : RandomQuantizedWeights.specs()) {
            if (!spec.kind().startsWith("fp8") && !spec.kind().equals("int8")) {
                continue;
            }
            Path dirOf = RandomQuantizedWeights.write(dir.resolve("rq-" + model++), spec);
            try (Checkpoint c = Checkpoint.open(dirOf)) {
                QuantizedWeight w = WeightFormats.detect(c).weight(RandomQuantizedWeights.WEIGHT);
                int rows = spec.rows();
                int cols = spec.cols();
                int band = w instanceof Fp8Weight && ((Fp8Weight) w).scheme() == Fp8Weight.Scheme.TENSOR ? rows
                        : w instanceof Fp8Weight ? ((Fp8Weight) w).blockRows() : 1;
                int step = band == 1 ? 7 : band;
                List<int[]> ranges = new ArrayList<>(List.of(new int[] {0, rows}));
                for (int r0 = 0; r0 < rows && band < rows && ranges.size() < 4; r0 += step) { // the first three bands
                    ranges.add(new int[] {r0, Math.min(step, rows - r0)});
                }
                boolean tensor = w instanceof Fp8Weight && ((Fp8Weight) w).scheme() == Fp8Weight.Scheme.TENSOR;
                for (int bad = 0; bad < 2; bad++) {
                    for (int[] range : ranges) {
                        if (bad == 1 && range[0] != 0) {
                            continue;
                        }
                        Path d = root.resolve(String.valueOf(id++));
                        writeRequantCase(d, w, spec.hashCode() + 31L * id, range[0], range[1], bad == 1);
                        if (tensor) {
                            // the same whole weight through the two kernels of one scale per tensor (fp8_tensor_stage, fp8_tensor_requant)
                            Path t = root.resolve(String.valueOf(id++));
                            Files.createDirectories(t);
                            try (Stream<Path> files = Files.list(d)) {
                                for (Path f : files.toList()) {
                                    Files.copy(f, t.resolve(f.getFileName()));
                                }
                            }
                            Files.writeString(t.resolve("meta.txt"), Files.readString(d.resolve("meta.txt")).replace("fp8rq_", "fp8trq_"));
                        }
                    }
                }
            }
        }
        return id;
    }

    /**
     * An fp16 absmax a whose bitsandbytes reciprocal (rcp.approx) is not the correctly rounded one,
     * and an fp16 value h in [-a, a] whose int8 code differs between the two: a kernel that ignored
     * CudaFastMath's table would code h wrongly.
     */
    private static final float[] RCP_SENSITIVE = rcpSensitive();

    private static float[] rcpSensitive() {
        for (int ab = 0x3C00; ab < 0x7C00; ab++) {
            float a = (float) FloatFormat.F16.decode(ab);
            float approx = CudaFastMath.mul(127f, CudaFastMath.rcp(a));
            float rn = CudaFastMath.mul(127f, 1f / a);
            if (approx == rn) {
                continue;
            }
            for (int hb = 0; hb < ab; hb++) {
                float h = (float) FloatFormat.F16.decode(hb);
                if (Math.rint(CudaFastMath.mul(h, approx)) != Math.rint(CudaFastMath.mul(h, rn))) {
                    return new float[] {a, h};
                }
            }
        }
        throw new IllegalStateException("no fp16 value whose int8 code depends on the reciprocal's table");
    }

    /** One requantization case: rows [row0, row0 + n) of {@code w} merged to random values; {@code bad}: one of them the format cannot take. */
    private static void writeRequantCase(Path d, QuantizedWeight w, long seed, int row0, int n, boolean bad) throws Exception {
        Files.createDirectories(d);
        SplittableRandom rnd = new SplittableRandom(seed);
        boolean int8 = w instanceof BnbInt8Format.Int8Weight;
        FloatFormat fmt = FloatFormat.of(w.dtype());
        int cols = (int) w.shape()[1];
        int count = n * cols;
        int size = fmt.sizeInBytes();
        ByteBuffer x = ByteBuffer.allocate(count * size).order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer base = ByteBuffer.allocate(count * size).order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer p = ByteBuffer.allocate(count * 8).order(ByteOrder.LITTLE_ENDIAN);
        double[] delta = new double[count];
        // e4m3 ties at scale 1 (a block whose absmax is 448): 1 + 2^-4 to 1, 1 + 3 * 2^-4 to 1.25, 2^-10 to 0, 3 * 2^-10 to 2^-8
        double[] ties = {448, 1.0625, 1.1875, 0x1p-10, 3 * 0x1p-10, -1.0625, -0x1p-10};
        for (int i = 0; i < count; i++) {
            int r = i / cols;
            int col = i % cols;
            double wv;
            double pv;
            if ((row0 + r) % 5 == 3 && !(int8 && r == 0)) {
                wv = 0; // zero rows: int8's zero rows, and FP8 blocks whose rows are all zero where blockRows is 1
                pv = 0;
            } else if (r == 0 && col < ties.length) {
                wv = ties[col];
                pv = 0;
            } else {
                double mag = Math.scalb(1.0, rnd.nextInt(-12, int8 ? 9 : 6));
                wv = fmt.round((rnd.nextDouble() * 2 - 1) * mag);
                pv = (rnd.nextDouble() * 2 - 1) * mag * (rnd.nextInt(4) == 0 ? 0.5 : 1e-3);
            }
            if (int8 && r == 1) {
                // a row whose code depends on rcp.approx's last bit: absmax a, the other elements h
                wv = col == 0 ? RCP_SENSITIVE[0] : RCP_SENSITIVE[1];
                pv = 0;
            }
            double xv = fmt.round(wv + pv);
            if (bad && i == count / 2) {
                xv = int8 ? 70000.0 : (count % 2 == 0 ? Double.NaN : Double.POSITIVE_INFINITY);
            }
            fmt.putBits(x, i, fmt.encode(xv));
            fmt.putBits(base, i, fmt.encode(wv));
            p.putDouble(8 * i, pv);
            delta[i] = (wv + pv) - wv;
        }
        QuantizedOutput out = int8 ? w.requantizedOutput() : Fp8Output.requantizing((Fp8Weight) w);
        Requantizer rq = out.requantizer(w);
        long first = (long) row0 * cols;
        byte[] codes = new byte[0];
        double[] sums = new double[5];
        try {
            rq.encode(first, count, x.duplicate().order(ByteOrder.LITTLE_ENDIAN), base.duplicate().order(ByteOrder.LITTLE_ENDIAN), delta);
            ByteBuffer cb = rq.codes(first, count);
            codes = new byte[count];
            cb.get(codes);
            Requantizer.Change ch = rq.measure((int) (first / rq.blockElements()));
            sums = new double[] {ch.codesChanged(), ch.sumSq(), ch.dot(), ch.deltaSq(), 0};
        } catch (QuantException e) {
            sums[4] = 1;
        }
        rq.finish();
        ByteBuffer allScales = rq.tail().get(0).order(ByteOrder.LITTLE_ENDIAN);
        long rows = w.shape()[0];
        long blockRows = int8 ? 1 : ((Fp8Weight) w).scheme() == Fp8Weight.Scheme.TENSOR ? rows : ((Fp8Weight) w).blockRows();
        long blockCols = int8 ? cols : ((Fp8Weight) w).scheme() == Fp8Weight.Scheme.TENSOR ? cols : ((Fp8Weight) w).blockCols();
        long gridCols = (cols + blockCols - 1) / blockCols;
        long firstBlock = row0 / blockRows * gridCols;
        long blocks = (n + blockRows - 1) / blockRows * gridCols;
        byte[] scales = new byte[(int) (4 * blocks)];
        allScales.get((int) (4 * firstBlock), scales);
        ByteBuffer sumBytes = ByteBuffer.allocate(40).order(ByteOrder.LITTLE_ENDIAN);
        for (double v : sums) {
            sumBytes.putDouble(v);
        }
        Files.write(d.resolve("staged.bin"), x.array());
        Files.write(d.resolve("w.bin"), base.array());
        Files.write(d.resolve("p.bin"), p.array());
        Files.write(d.resolve("expected.bin"), codes);
        Files.write(d.resolve("expected_scales.bin"), scales);
        Files.write(d.resolve("expected_sums.bin"), sumBytes.array());
        String kernel = int8 ? "int8rq" : "fp8rq_" + fmt.dtype().name().toLowerCase(Locale.ROOT);
        Files.writeString(d.resolve("meta.txt"), String.join(" ", kernel, "" + n, "" + cols, "" + row0, "" + rows, "0", "" + blockRows,
                "" + blockCols, "" + gridCols, "0 0") + "\n");
    }

    /** Writes the block's staged codes and the weight's metadata into {@code d}; returns the case's meta line. */
    private static String stage(QuantizedWeight w, FloatFormat out, int row0, int n, Path d) throws IOException {
        long cols = w.shape()[1];
        long rows = w.shape()[0];
        String type = out.dtype().name().toLowerCase(Locale.ROOT);
        try (TensorSource.Bytes stored = TensorSource.dequantized(w).readStored(row0 * cols, (int) (n * cols))) {
            if (w instanceof PackedIntWeight) {
                PackedIntWeight p = (PackedIntWeight) w;
                ByteBuffer words = ByteBuffer.allocate(Math.toIntExact(p.rowWords(row0, n) * 4)).order(ByteOrder.LITTLE_ENDIAN);
                p.gatherRowWords(stored.bytes(), row0, n, words);
                Files.write(d.resolve("staged.bin"), words.array());
                Files.write(d.resolve("scales.bin"), floats(p.scales()));
                Files.write(d.resolve("zeros.bin"), ints(p.zeros()));
                Files.write(d.resolve("gidx.bin"), ints(p.groupOfColumn()));
                String kernel = (p.packing() == PackedIntWeight.Packing.AWQ_GEMM ? "awq_" : "gptq_") + type;
                return String.join(" ", kernel, "" + n, "" + cols, "" + row0, "" + rows, "" + p.bits(), "0 0 0 0 0");
            }
            byte[] codes = new byte[(int) (n * cols)];
            stored.bytes().get(0, codes);
            Files.write(d.resolve("staged.bin"), codes);
            if (w instanceof BnbInt8Format.Int8Weight) {
                Files.write(d.resolve("scales.bin"), floats(((BnbInt8Format.Int8Weight) w).rowScales()));
                return String.join(" ", "int8_f32", "" + n, "" + cols, "" + row0, "" + rows, "0 1", "" + cols, "1 0 2");
            }
            Fp8Weight f = (Fp8Weight) w;
            Files.write(d.resolve("scales.bin"), floats(f.scales()));
            long blockRows = f.scheme() == Fp8Weight.Scheme.TENSOR ? rows : f.blockRows();
            long blockCols = f.blockCols();
            long scaleCols = f.scheme() == Fp8Weight.Scheme.TENSOR || f.scheme() == Fp8Weight.Scheme.CHANNEL ? 1 : (cols + blockCols - 1) / blockCols;
            int product = MergeKernels.code(FloatFormat.of(f.productDtype()));
            int e5m2 = f.weight().info().dtype() == DType.F8_E5M2 ? 1 : 0;
            return String.join(" ", "fp8_" + type, "" + n, "" + cols, "" + row0, "" + rows, "0", "" + blockRows, "" + blockCols, "" + scaleCols,
                    "" + e5m2, "" + product);
        }
    }

    private static byte[] floats(float[] a) {
        ByteBuffer b = ByteBuffer.allocate(a.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : a) {
            b.putFloat(v);
        }
        return b.array();
    }

    private static byte[] ints(int[] a) {
        ByteBuffer b = ByteBuffer.allocate(a.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : a) {
            b.putInt(v);
        }
        return b.array();
    }

    private static HostCommand.Result run(Path dir, String... command) throws Exception {
        return HostCommand.run(dir, Duration.ofMinutes(10), command);
    }
}
