package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** `merge --verify --json`: the written model is checked before it appears, and the worst error per tensor is reported. */
class MergeVerifyCliTest {
    @TempDir
    Path dir;

    @Test
    void verifiedMergeReportsZeroUlpPerAdaptedTensor() throws Exception {
        Path fixture = Path.of("src/test/resources/fixtures/dora_linear");
        PrintStream stdout = System.out;
        ByteArrayOutputStream captured = new ByteArrayOutputStream();
        int code;
        try {
            System.setOut(new PrintStream(captured, true, StandardCharsets.UTF_8));
            code = Main.run("merge", "--base", fixture.resolve("base").toString(), "--adapter", fixture.resolve("adapter").toString(),
                    "--out", dir.resolve("out").toString(), "--device", "cpu", "--verify", "--json", "--quiet");
        } finally {
            System.setOut(stdout);
        }
        assertEquals(ExitCodes.OK, code);
        JsonNode report = new ObjectMapper().readTree(captured.toString(StandardCharsets.UTF_8));
        JsonNode ulps = report.get("verified_worst_ulp");
        assertEquals(report.get("tensors_merged").asInt(), ulps.size(), "every merged tensor verified: " + ulps);
        for (Iterator<Map.Entry<String, JsonNode>> it = ulps.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            assertEquals(0.0, e.getValue().asDouble(), e.getKey());
        }
        assertTrue(dir.resolve("out/model.safetensors").toFile().isFile());
    }
}
