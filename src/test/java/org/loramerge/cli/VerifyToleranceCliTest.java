package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.stream.Stream;
import java.util.ArrayList;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * {@code verify --tolerance fp32-accumulation} on merges made by another tool: PEFT's own
 * merge_and_unload output of every golden fixture passes it (PEFT accumulates in fp32, so its F32
 * merges are thousands of ulps from exact and still correct), while a merge that is wrong beyond
 * fp32 rounding fails it, and the report says which tolerance ran.
 */
class VerifyToleranceCliTest {
    static final Path FIXTURES = Path.of("src/test/resources/fixtures");
    /**
     * Where PEFT's merged model is another model than base + adapter (README, "What is merged"): it merges a
     * tied lm_head's delta into the shared embedding, and with ensure_weight_tying applies it twice.
     */
    static final Set<String> PEFT_MERGES_ANOTHER_MODEL = Set.of("tied_lm_head", "tied_lm_head_ensure_tying");

    @TempDir
    Path dir;

    static Stream<String> fixtures() throws IOException {
        try (Stream<Path> s = Files.list(FIXTURES)) {
            return s.filter(p -> Files.isDirectory(p.resolve("peft"))).map(p -> p.getFileName().toString()).sorted().toList().stream();
        }
    }

    private static InspectAndVerifyCliTest.Run verify(Path c, Path adapter, String... extra) {
        List<String> args = new ArrayList<>(List.of("verify", "--base", c.resolve("base").toString(), "--adapter", adapter.toString(),
                "--merged", c.resolve("peft").toString(), "--rows", "1000"));
        args.addAll(List.of(extra));
        return InspectAndVerifyCliTest.run(args.toArray(new String[0]));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("fixtures")
    void peftsOwnMergePassesTheFp32ToleranceUnlessPeftMergedAnotherModel(String name) {
        Path c = FIXTURES.resolve(name);
        InspectAndVerifyCliTest.Run r = verify(c, c.resolve("adapter"), "--tolerance", "fp32-accumulation");
        if (PEFT_MERGES_ANOTHER_MODEL.contains(name)) {
            assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r.out());
            assertTrue(r.out().contains("embed_tokens.weight"), "the shared embedding PEFT changed is named: " + r.out());
        } else {
            assertEquals(ExitCodes.OK, r.code(), r.out() + r.err());
            assertTrue(r.out().startsWith("verify: PASSED"), r.out());
        }
        assertTrue(r.out().contains("tolerance: fp32-accumulation"), "the report says which check ran: " + r.out());
    }

    @Test
    void peftsF32MergeFailsTheStrictUlpModeButPassesFp32Accumulation() {
        Path c = FIXTURES.resolve("linear_f32");
        InspectAndVerifyCliTest.Run strict = verify(c, c.resolve("adapter"));
        assertEquals(ExitCodes.VERIFY_FAILED, strict.code(), strict.out());
        assertTrue(strict.out().contains("tolerance: ulp (at most 1 ulp"), strict.out());
        InspectAndVerifyCliTest.Run fp32 = verify(c, c.resolve("adapter"), "--tolerance", "fp32-accumulation", "--json");
        assertEquals(ExitCodes.OK, fp32.code(), fp32.out());
        assertTrue(fp32.out().contains("\"tolerance\": \"fp32-accumulation\""), fp32.out());
    }

    @Test
    void aMergeWhoseScaleIsOffByOnePercentFailsTheFp32Tolerance() throws IOException {
        // PEFT's merge of linear_f32, checked against the same adapter with lora_alpha 1 % larger: as if merged with the wrong scale
        Path c = FIXTURES.resolve("linear_f32");
        Path adapter = Files.createDirectories(dir.resolve("adapter"));
        Files.copy(c.resolve("adapter/adapter_model.safetensors"), adapter.resolve("adapter_model.safetensors"));
        ObjectMapper om = new ObjectMapper();
        ObjectNode config = (ObjectNode) om.readTree(c.resolve("adapter/adapter_config.json").toFile());
        JsonNode alpha = config.get("lora_alpha");
        config.put("lora_alpha", alpha.asDouble() * 1.01);
        om.writeValue(adapter.resolve("adapter_config.json").toFile(), config);
        InspectAndVerifyCliTest.Run r = verify(c, adapter, "--tolerance", "fp32-accumulation");
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r.out());
        assertTrue(r.out().contains("times the fp32-accumulation bound"), r.out());
    }
}
