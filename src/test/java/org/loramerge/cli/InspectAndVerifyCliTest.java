package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.FixtureCases;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** `inspect` and `verify` through the command line, on the golden fixtures made with PEFT. */
class InspectAndVerifyCliTest {
    static final Path FIXTURES = Path.of("src/test/resources/fixtures");

    record Run(int code, String out, String err) {
    }

    static Run run(String... args) {
        PrintStream out = System.out;
        PrintStream err = System.err;
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        try {
            System.setOut(new PrintStream(o, true, StandardCharsets.UTF_8));
            System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
            int code = Main.run(args);
            return new Run(code, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8));
        } finally {
            System.setOut(out);
            System.setErr(err);
        }
    }

    @Test
    void inspectShowsTheResolvedRankAlphaAndScaleOfEveryModule() {
        Run r = run("inspect", FIXTURES.resolve("rank_alpha_pattern/adapter").toString());
        assertEquals(ExitCodes.OK, r.code(), r.err());
        // rank_pattern gives layer 0's q_proj rank 3 and every k_proj rank 2 (see the fixture's case.json)
        String q0 = r.out().lines().filter(l -> l.contains("model.layers.0.self_attn.q_proj ")).findFirst().orElseThrow();
        String k1 = r.out().lines().filter(l -> l.contains("model.layers.1.self_attn.k_proj ")).findFirst().orElseThrow();
        assertTrue(q0.trim().split("\\s+")[1].equals("3"), q0);
        assertTrue(k1.trim().split("\\s+")[1].equals("2"), k1);
    }

    @Test
    void inspectListsTheTensorsOfAModel() {
        Run r = run("inspect", FIXTURES.resolve("sharded_bf16/base").toString(), "--json");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.out().contains("\"sharded\": true") && r.out().contains("model.layers.0.self_attn.q_proj.weight"), r.out());
    }

    @Test
    void inspectDescribesEachQuantizedWeightOfAQloraBase() throws Exception {
        Path base = Path.of("src/test/resources/qlora/dq_bs64/base");
        Run r = run("inspect", base.toString());
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.out().contains("quantized: bitsandbytes 4-bit NF4, 14 weights"), r.out());
        String q = r.out().lines().filter(l -> l.startsWith("  model.layers.0.self_attn.q_proj.weight ")).reduce((a, b) -> b).orElseThrow();
        assertTrue(q.contains("[64, 64]") && q.contains("NF4 (bitsandbytes), blocksize 64, double-quantized, bfloat16"), q);
        Run j = run("inspect", base.toString(), "--json");
        JsonNode root = new ObjectMapper().readTree(j.out());
        assertEquals("bitsandbytes 4-bit NF4", root.path("quantization").path("format").asText(), j.out());
        assertEquals(14, root.path("quantization").path("weights").size());
        assertEquals("BF16", root.path("quantization").path("weights").get(0).path("dtype").asText());
    }

    @Test
    void inspectListsTheTensorsOfAQuantizedModelItCannotReadThenSaysWhyWithExitThree(@TempDir Path dir) throws Exception {
        Path src = Path.of("src/test/resources/gptq_awq/gptq_v1_4bit_g32_actorder/base");
        Path base = dir.resolve("gptq3");
        Files.createDirectories(base);
        try (Stream<Path> files = Files.list(src)) {
            for (Path f : files.toList()) {
                Files.copy(f, base.resolve(f.getFileName()));
            }
        }
        Files.writeString(base.resolve("config.json"), Files.readString(src.resolve("config.json")).replace("\"bits\": 4", "\"bits\": 3"));
        Run r = run("inspect", base.toString());
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        assertTrue(r.out().contains("model.layers.0.self_attn.q_proj.qweight"), "the tensors are listed first: " + r.out());
        assertTrue(r.err().contains("bits is 3") && r.err().contains("16-bit model instead"), r.err());
        Run j = run("inspect", base.toString(), "--json");
        assertEquals(ExitCodes.BAD_INPUT, j.code(), j.err());
        JsonNode error = new ObjectMapper().readTree(j.out()).get("error");
        assertTrue(error != null && error.get("message").asText().contains("bits is 3"), "--json prints one document, the error: " + j.out());
    }

    @Test
    void verifyAcceptsPeftsMergeWithinOneUlpAndReportsItsDifferences() throws Exception {
        Path c = FIXTURES.resolve("linear_bf16");
        Run ok = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("peft").toString(), "--rows", "1000");
        assertEquals(ExitCodes.OK, ok.code(), ok.err());
        // PEFT's output is off by one ulp in 2 elements of this fixture: exactness demanded, verify fails (exit 6)
        Run strict = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("peft").toString(), "--rows", "1000", "--max-ulp", "0");
        assertEquals(ExitCodes.VERIFY_FAILED, strict.code(), strict.err());
        assertTrue(strict.out().contains("ulp exceeds 0"), strict.out());
        // beside verify's own arithmetic: PEFT against the fixture's independently computed exact result
        long[] distances = ulpDistances(c.resolve("peft"), c.resolve("expected.safetensors"));
        assertEquals(1, distances[0], "PEFT's worst element, in ulps of the exact result rounded once");
        assertTrue(distances[1] > 0, "elements where PEFT is 1 ulp off");
    }

    /**
     * {worst ulp distance, number of elements that differ} between a merged model and a fixture's
     * expected.safetensors (written by scripts/fixtures/make_fixtures.py in exact integer arithmetic), over
     * the expected tensors, from their raw BF16/F16/F32 bits.
     */
    static long[] ulpDistances(Path merged, Path expectedFile) throws Exception {
        long worst = 0;
        long differ = 0;
        try (Checkpoint m = Checkpoint.open(merged); SafetensorsFile expected = SafetensorsFile.open(expectedFile)) {
            for (TensorInfo e : expected.tensors()) {
                TensorInfo t = m.tensor(e.name());
                assertEquals(e.dtype(), t.dtype(), e.name());
                ByteBuffer want = expected.readAll(e).order(ByteOrder.LITTLE_ENDIAN);
                ByteBuffer got = m.fileOf(e.name()).readAll(t).order(ByteOrder.LITTLE_ENDIAN);
                int size = e.dtype().sizeInBytes();
                for (long i = 0; i < e.numElements(); i++) {
                    long d = Math.abs(FixtureCases.ordered(want, i, size) - FixtureCases.ordered(got, i, size));
                    worst = Math.max(worst, d);
                    differ += d != 0 ? 1 : 0;
                }
            }
        }
        return new long[] {worst, differ};
    }

    @Test
    void verifyFindsAnAdapterThatWasNotApplied() throws Exception {
        // the base itself, passed as the merged model: every adapted tensor lacks the adapter's change
        Path c = FIXTURES.resolve("linear_bf16");
        Run r = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("base").toString(), "--max-ulp", "1000000");
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r.err());
        assertTrue(r.out().contains("the adapter's change is not there"), r.out());
        // beside verify's own arithmetic: the base really lacks the change the exact result has
        long[] distances = ulpDistances(c.resolve("base"), c.resolve("expected.safetensors"));
        assertTrue(distances[1] > 10_000 && distances[0] > 1, "the base differs from the exact merge in " + distances[1] + " elements");
    }
}
