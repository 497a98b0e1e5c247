package org.loramerge.cli;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

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
        assertTrue(r.out().contains("\"sharded\" : true") && r.out().contains("model.layers.0.self_attn.q_proj.weight"), r.out());
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
        com.fasterxml.jackson.databind.JsonNode root = new com.fasterxml.jackson.databind.ObjectMapper().readTree(j.out());
        assertEquals("bitsandbytes 4-bit NF4", root.path("quantization").path("format").asText(), j.out());
        assertEquals(14, root.path("quantization").path("weights").size());
        assertEquals("BF16", root.path("quantization").path("weights").get(0).path("dtype").asText());
    }

    @Test
    void verifyAcceptsPeftsMergeWithinOneUlpAndReportsItsDifferences() {
        Path c = FIXTURES.resolve("linear_bf16");
        Run ok = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("peft").toString(), "--rows", "1000");
        assertEquals(ExitCodes.OK, ok.code(), ok.err());
        // PEFT's output is off by one ulp in 2 elements of this fixture: exactness demanded, verify fails (exit 6)
        Run strict = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("peft").toString(), "--rows", "1000", "--max-ulp", "0");
        assertEquals(ExitCodes.VERIFY_FAILED, strict.code(), strict.err());
        assertTrue(strict.err().contains("ulp exceeds 0"), strict.err());
    }

    @Test
    void verifyFindsAnAdapterThatWasNotApplied() {
        // the base itself, passed as the merged model: every adapted tensor lacks the adapter's change
        Path c = FIXTURES.resolve("linear_bf16");
        Run r = run("verify", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--merged", c.resolve("base").toString(), "--max-ulp", "1000000");
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r.err());
        assertTrue(r.err().contains("the adapter's change is not there"), r.err());
    }
}
