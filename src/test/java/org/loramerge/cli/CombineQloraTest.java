package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Combinations on a bitsandbytes 4-bit (QLoRA) base: the weights are dequantized once, the
 * combined delta applied, and requantized once ({@code --to nf4}) with the survival of the
 * combined delta reported; {@code cat} of an adapter with itself at weights 0.5 and 0.5 is, byte
 * for byte and figure for figure, the merge of that adapter alone; {@code combine} reads the
 * 4-bit base for its shapes and writes the combination.
 */
class CombineQloraTest {
    private static final Path CASE = Paths.get("src/test/resources/qlora/dq_bs64");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path dir;

    private record Result(int code, String out, String err) {
    }

    private static Result run(List<String> args) {
        PrintStream oldErr = System.err;
        PrintStream oldOut = System.out;
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8); PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8)) {
            System.setErr(e);
            System.setOut(o);
            int code = Main.run(args.toArray(new String[0]));
            return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
        } finally {
            System.setErr(oldErr);
            System.setOut(oldOut);
        }
    }

    private static List<String> merge(Path out, String to, int adapters, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", CASE.resolve("base").toString(), "--out", out.toString(), "--to", to,
                "--device", "cpu", "--quiet", "--json"));
        for (int i = 0; i < adapters; i++) {
            args.addAll(List.of("--adapter", CASE.resolve("adapter").toString()));
        }
        args.addAll(Arrays.asList(extra));
        return args;
    }

    @ParameterizedTest
    @ValueSource(strings = {"nf4", "bf16"})
    void catOfAnAdapterWithItselfAtHalfWeightsIsTheMergeOfTheAdapter(String to) throws Exception {
        Path single = dir.resolve("single");
        Path combined = dir.resolve("combined");
        Result a = run(merge(single, to, 1));
        assertEquals(0, a.code(), a.err());
        Result b = run(merge(combined, to, 2, "--combine", "cat", "--weights", "0.5,0.5"));
        assertEquals(0, b.code(), b.err());
        Map<String, String> x = TinyModels.hashTree(single);
        Map<String, String> y = TinyModels.hashTree(combined);
        // the model card says what was done, so it names the method and both adapters; every other file is the single merge's
        assertTrue(Files.readString(combined.resolve("README.md")).contains("cat"), "the model card names the combination");
        x.remove("README.md");
        y.remove("README.md");
        assertEquals(x, y, "W + 0.5·s·B·A + 0.5·s·B·A is W + s·B·A exactly, dequantized once and rounded (and requantized) once");
        if (to.equals("nf4")) {
            JsonNode ra = JSON.readTree(a.out()).get("requantization");
            JsonNode rb = JSON.readTree(b.out()).get("requantization");
            assertEquals(ra.get("survival").asDouble(), rb.get("survival").asDouble(), 0.0, "the same survival for the same combined delta");
            assertEquals(ra.get("codes_changed").asLong(), rb.get("codes_changed").asLong());
        }
    }

    @Test
    void combineOnAFourBitBaseWritesAnAdapterWhoseUpdateIsTheCombination() throws Exception {
        Path out = dir.resolve("combined");
        Result r = run(List.of("combine", "--base", CASE.resolve("base").toString(), "--adapter", CASE.resolve("adapter").toString(),
                "--adapter", CASE.resolve("adapter").toString(), "--weights", "0.5,0.5", "--combine", "svd", "--rank", "6", "--out",
                out.toString(), "--quiet"));
        assertEquals(0, r.code(), r.err());
        try (SafetensorsFile mine = SafetensorsFile.open(out.resolve("adapter_model.safetensors"));
             SafetensorsFile theirs = SafetensorsFile.open(CASE.resolve("adapter/adapter_model.safetensors"))) {
            double scale = 16.0 / 6; // the case's lora_alpha / r; the new adapter's scale is 1
            int checked = 0;
            for (TensorInfo b : theirs.tensors()) {
                if (!b.name().endsWith("lora_B.weight")) {
                    continue;
                }
                String a = b.name().replace("lora_B", "lora_A");
                double[] want = product(values(theirs, b), values(theirs, theirs.tensor(a)), b.shape());
                double[] got = product(values(mine, mine.tensor(b.name())), values(mine, mine.tensor(a)), mine.tensor(b.name()).shape());
                double max = 0;
                for (double v : want) {
                    max = Math.max(max, Math.abs(scale * v));
                }
                for (int i = 0; i < want.length; i++) {
                    assertEquals(scale * want[i], got[i], 1e-5 * max, b.name() + " B'·A' element " + i);
                }
                checked++;
            }
            assertEquals(6, checked, "every adapted module of the 4-bit base");
        }
    }

    private static double[] values(SafetensorsFile f, TensorInfo t) throws java.io.IOException {
        FloatFormat fmt = FloatFormat.of(t.dtype());
        double[] v = new double[(int) t.numElements()];
        try (MappedRegion m = f.map(t, 0, t.sizeInBytes())) {
            for (int i = 0; i < v.length; i++) {
                v[i] = fmt.decode(fmt.bitsAt(m.bytes(), i));
            }
        }
        return v;
    }

    private static double[] product(double[] b, double[] a, long[] bShape) {
        int out = (int) bShape[0];
        int r = (int) bShape[1];
        int rest = a.length / r;
        double[] p = new double[out * rest];
        for (int i = 0; i < out; i++) {
            for (int k = 0; k < r; k++) {
                for (int j = 0; j < rest; j++) {
                    p[i * rest + j] += b[i * r + k] * a[k * rest + j];
                }
            }
        }
        return p;
    }

    @Test
    void tiesOnAFourBitBaseRequantizesOnceAndReportsTheSurvivalOfTheCombinedDelta() throws Exception {
        Path single = dir.resolve("single");
        Path out = dir.resolve("ties");
        Result a = run(merge(single, "nf4", 1));
        assertEquals(0, a.code(), a.err());
        Result r = run(merge(out, "nf4", 2, "--combine", "ties", "--weights", "1,1", "--density", "0.4", "--verify"));
        assertEquals(0, r.code(), r.err());
        JsonNode report = JSON.readTree(r.out());
        JsonNode req = report.get("requantization");
        assertTrue(req != null && req.get("tensors").size() == 6, "every combined 4-bit weight is in the survival report: " + r.out());
        // trimming to 40 % leaves a smaller delta than the adapter's own, so its survival figures are its own
        assertNotEquals(JSON.readTree(a.out()).get("requantization").get("delta_norm").asDouble(), req.get("delta_norm").asDouble());
        assertTrue(req.get("delta_norm").asDouble() > 0);
        for (JsonNode t : report.get("verified_worst_ulp")) {
            assertEquals(0.0, t.asDouble(), "--verify recomputes the combination and finds every sampled code as written");
        }
    }
}
