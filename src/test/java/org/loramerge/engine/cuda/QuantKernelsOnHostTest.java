package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.BnbInt8Format;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.PackedIntWeight;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * kernels/quant.cu built for the host by gcc (kernels/test/quant_host.cpp, CUDA's environment
 * stood in for by kernels/test/host/) and run on row blocks of the random weights of
 * {@link RandomQuantizedWeights}, staged as DeviceDequantizer stages them: every kernel writes the
 * CPU codec's bytes, and nothing past its block, with the launch's grid and with a grid of one
 * block (every grid-stride loop turning). What the kernels compute is so checked on any machine
 * with g++; that the GPU runs them the same way, CudaQuantTest checks there. Skips without g++.
 */
class QuantKernelsOnHostTest {
    @TempDir
    Path dir;

    @Test
    void quantKernelsBuiltForTheHostWriteTheCpuCodecsBytes() throws Exception {
        assumeTrue(run(dir, "g++", "--version").exit == 0, "no g++ here");
        Path exe = dir.resolve("quant_host");
        Result built = run(dir, "g++", "-std=c++20", "-O1", "-pthread", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
                "-I" + Path.of("kernels/test/host").toAbsolutePath(), "-I" + Path.of("kernels").toAbsolutePath(), "-o", exe.toString(),
                Path.of("kernels/test/quant_host.cpp").toAbsolutePath().toString());
        assertEquals(0, built.exit, built.output);
        Path cases = dir.resolve("cases");
        int count = writeCases(cases);
        for (String grid : new String[] {"0", "1"}) {
            Result r = run(dir, exe.toString(), cases.toString(), String.valueOf(count), grid);
            assertEquals(0, r.exit, r.output);
            assertTrue(r.output.endsWith(count + " cases, 0 failures\n"), r.output);
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

    private record Result(int exit, String output) {
    }

    private static Result run(Path dir, String... command) throws Exception {
        Process p;
        try {
            p = new ProcessBuilder(List.of(command)).directory(dir.toFile()).redirectErrorStream(true).start();
        } catch (IOException e) {
            return new Result(-1, e.getMessage());
        }
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(10, TimeUnit.MINUTES)) {
            p.destroyForcibly();
            return new Result(-2, "timed out: " + output);
        }
        return new Result(p.exitValue(), output);
    }
}
