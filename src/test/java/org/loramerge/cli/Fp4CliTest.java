package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * bitsandbytes FP4 end to end: {@code quantize --quant-type fp4} writes the FP4 group (its codes are
 * the reference's: Nf4CodecVectorsTest), and a merge into it dequantizes ({@code --to bf16}) or
 * requantizes with its own code book and settings ({@code --to fp4}), both checked by {@code --verify}.
 */
class Fp4CliTest {
    static final Path EXAMPLE = Path.of("examples/tiny-llama");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path dir;

    @Test
    void anFp4BaseMergesDenseOrBackToFp4() throws Exception {
        Path fp4 = dir.resolve("fp4");
        CliRun.Result q = CliRun.run("quantize", "--base", EXAMPLE.resolve("base").toString(), "--out", fp4.toString(), "--quant-type", "fp4",
                "--double-quant", "--quiet");
        assertEquals(0, q.code(), q.err());
        assertEquals("fp4", JSON.readTree(Files.readAllBytes(fp4.resolve("config.json"))).get("quantization_config")
                .get("bnb_4bit_quant_type").asText());
        try (Checkpoint c = Checkpoint.open(fp4)) {
            QuantizedModel m = WeightFormats.detect(c);
            QuantizedWeight w = m.weights().values().iterator().next();
            assertEquals("fp4", w.kind());
            assertTrue(w.describe().startsWith("FP4 (bitsandbytes), blocksize 64, double-quantized"), w.describe());
        }
        Path adapter = EXAMPLE.resolve("adapter");
        CliRun.Result dense = CliRun.merge(fp4, adapter, dir.resolve("bf16"), "--to", "bf16", "--verify", "--verify-rows", "all");
        assertEquals(0, dense.code(), dense.err());
        CliRun.Result again = CliRun.merge(fp4, adapter, dir.resolve("again"), "--to", "fp4", "--verify", "--json");
        assertEquals(0, again.code(), again.err());
        JsonNode report = JSON.readTree(again.out());
        assertTrue(report.get("requantization").get("tensors").size() > 0, again.out());
        try (Checkpoint c = Checkpoint.open(dir.resolve("again"))) {
            QuantizedModel m = WeightFormats.detect(c);
            assertTrue(m.weights().values().stream().allMatch(x -> x.kind().equals("fp4") && x.dtype() == DType.BF16));
        }
        CliRun.Result nf4 = CliRun.merge(fp4, adapter, dir.resolve("nf4"), "--to", "nf4");
        assertEquals(ExitCodes.USAGE, nf4.code(), "an FP4 base requantizes to FP4, not NF4: " + nf4.err());
        assertTrue(nf4.err().contains("--to fp4") && nf4.err().contains("--to bf16"), nf4.err());
    }
}
