package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
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
import org.junit.jupiter.params.provider.CsvSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code merge --combine} on the other quantized bases (bitsandbytes FP4, FP8, GPTQ, AWQ;
 * docs/FORMATS.md §8.5, §5, §12, §13; 8-bit in BnbInt8Test): each weight is dequantized once by its
 * format's codec, the combined delta applied, and rounded once to the dense dtype or requantized
 * once ({@code --to fp4}, {@code --to fp8}, GPTQ {@code --to nf4}),
 * the survival report covering the combined delta. {@code cat} of an adapter with itself at
 * weights 0.5 and 0.5 is, byte for byte and figure for figure, the merge of that adapter alone.
 */
class CombineQuantizedBaseTest {
    private static final Path RESOURCES = Paths.get("src/test/resources");
    private static final Path EXAMPLE = Paths.get("examples/tiny-llama");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path dir;

    private static List<String> merge(Path caseDir, Path out, String to, int adapters, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", caseDir.resolve("base").toString(), "--out", out.toString(), "--to", to,
                "--device", "cpu", "--quiet", "--json"));
        for (int i = 0; i < adapters; i++) {
            args.addAll(List.of("--adapter", caseDir.resolve("adapter").toString()));
        }
        args.addAll(Arrays.asList(extra));
        return args;
    }

    private static CliRun.Result run(List<String> args) {
        return CliRun.run(args.toArray(new String[0]));
    }

    private static String both(CliRun.Result r) {
        return "exit " + r.code() + "\nstdout:\n" + r.out() + "\nstderr:\n" + r.err();
    }

    @ParameterizedTest(name = "{0} --to {1}")
    @CsvSource({"fp8/fine_grained_128, fp8", "fp8/fine_grained_128, bf16", "fp8/fine_grained_tensor, fp8", "fp8/compressed_tensors, bf16",
            "gptq_awq/gptq_v1_4bit_g32_actorder, nf4", "gptq_awq/gptq_v1_4bit_g32_actorder, f16", "gptq_awq/awq_gemm_4bit_g32, f16",
            "gptq_awq/gptq_v2_8bit_one_group, nf4"})
    void catOfAnAdapterWithItselfAtHalfWeightsIsTheMergeOfTheAdapter(String fixture, String to) throws Exception {
        assertCatAtHalfWeightsIsTheSingleMerge(RESOURCES.resolve(fixture), to);
    }

    /** bitsandbytes FP4 (a base made by quantize --quant-type fp4 from the example): the same, back to FP4 and dense. */
    @ParameterizedTest(name = "--to {0}")
    @CsvSource({"fp4", "bf16"})
    void catOnAnFp4BaseIsTheMergeOfTheAdapter(String to) throws Exception {
        Path caseDir = dir.resolve("fp4case");
        CliRun.Result q = CliRun.run("quantize", "--base", EXAMPLE.resolve("base").toString(), "--out", caseDir.resolve("base").toString(),
                "--quant-type", "fp4", "--double-quant", "--quiet");
        assertEquals(0, q.code(), both(q));
        Files.createDirectories(caseDir.resolve("adapter"));
        for (String f : List.of("adapter_config.json", "adapter_model.safetensors")) {
            Files.copy(EXAMPLE.resolve("adapter").resolve(f), caseDir.resolve("adapter").resolve(f));
        }
        assertCatAtHalfWeightsIsTheSingleMerge(caseDir, to);
    }

    private void assertCatAtHalfWeightsIsTheSingleMerge(Path caseDir, String to) throws Exception {
        Path single = dir.resolve("single");
        Path combined = dir.resolve("combined");
        CliRun.Result a = run(merge(caseDir, single, to, 1));
        assertEquals(0, a.code(), both(a));
        CliRun.Result b = run(merge(caseDir, combined, to, 2, "--combine", "cat", "--weights", "0.5,0.5", "--verify"));
        assertEquals(0, b.code(), both(b));
        Map<String, String> x = TinyModels.hashTree(single);
        Map<String, String> y = TinyModels.hashTree(combined);
        // the model card names the combination; every other file is the single merge's
        assertTrue(Files.readString(combined.resolve("README.md")).contains("cat"), "the model card names the combination");
        x.remove("README.md");
        y.remove("README.md");
        assertEquals(x, y, "W + 0.5·s·B·A + 0.5·s·B·A is W + s·B·A exactly, dequantized once and rounded (or requantized) once");
        JsonNode ra = JSON.readTree(a.out()).get("requantization");
        JsonNode rb = JSON.readTree(b.out()).get("requantization");
        if (!List.of("bf16", "f16", "f32").contains(to)) {
            assertTrue(rb != null && rb.get("tensors").size() > 0, "the combined weights are in the survival report: " + b.out());
            assertEquals(ra.get("survival").asDouble(), rb.get("survival").asDouble(), 0.0, "the same survival for the same combined delta");
            assertEquals(ra.get("codes_changed").asLong(), rb.get("codes_changed").asLong());
        }
        for (JsonNode t : JSON.readTree(b.out()).get("verified_worst_ulp")) {
            assertEquals(0.0, t.asDouble(), "--verify recomputes the combination and finds every sampled value as written");
        }
    }

    @Test
    void tiesOnAnFp8BaseRequantizesOnceToFp8AndReportsTheSurvivalOfTheCombinedDelta() throws Exception {
        Path caseDir = RESOURCES.resolve("fp8/fine_grained_128");
        Path single = dir.resolve("single");
        Path out = dir.resolve("ties");
        CliRun.Result a = run(merge(caseDir, single, "fp8", 1));
        assertEquals(0, a.code(), both(a));
        CliRun.Result r = run(merge(caseDir, out, "fp8", 2, "--combine", "ties", "--weights", "1,1", "--density", "0.4", "--verify"));
        assertEquals(0, r.code(), both(r));
        JsonNode report = JSON.readTree(r.out());
        JsonNode req = report.get("requantization");
        JsonNode own = JSON.readTree(a.out()).get("requantization");
        assertEquals(own.get("tensors").size(), req.get("tensors").size(), "every combined FP8 weight is in the survival report: " + r.out());
        // trimming to 40 % leaves another delta than the adapter's own, so its survival figures are its own
        assertNotEquals(own.get("delta_norm").asDouble(), req.get("delta_norm").asDouble());
        assertTrue(req.get("delta_norm").asDouble() > 0);
        for (JsonNode t : report.get("verified_worst_ulp")) {
            assertEquals(0.0, t.asDouble(), "--verify recomputes the combination and finds every sampled code as written");
        }
        try (Checkpoint c = Checkpoint.open(out)) {
            assertEquals(DType.F8_E4M3, c.tensor("model.layers.0.self_attn.q_proj.weight").dtype(), "the output is FP8 again");
            assertTrue(c.tensor("model.layers.0.self_attn.q_proj.weight_scale_inv") != null, "with its scales");
        }
    }

    /**
     * combine on an FP8 or GPTQ base writes a PEFT adapter: the base is read for its weights' shapes
     * (a GPTQ weight's own [out, in], not its packed qweight's), and cat of the adapter with itself
     * doubles its rank on every adapted module.
     */
    @ParameterizedTest(name = "{0}")
    @CsvSource({"fp8/fine_grained_128", "gptq_awq/gptq_v1_4bit_g32_actorder"})
    void combineOnAQuantizedBaseWritesTheConcatenatedAdapter(String fixture) throws Exception {
        Path caseDir = RESOURCES.resolve(fixture);
        Path out = dir.resolve("combined");
        CliRun.Result r = CliRun.run("combine", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(),
                "--adapter", caseDir.resolve("adapter").toString(), "--combine", "cat", "--out", out.toString(), "--quiet");
        assertEquals(0, r.code(), both(r));
        try (SafetensorsFile mine = SafetensorsFile.open(out.resolve("adapter_model.safetensors"));
             SafetensorsFile theirs = SafetensorsFile.open(caseDir.resolve("adapter/adapter_model.safetensors"))) {
            int checked = 0;
            for (TensorInfo t : theirs.tensors()) {
                TensorInfo m = mine.tensor(t.name());
                assertTrue(m != null, t.name() + " is in the combined adapter");
                boolean isA = t.name().endsWith("lora_A.weight");
                assertEquals(isA ? 2 * t.dim(0) : t.dim(0), m.dim(0), t.name());
                assertEquals(isA ? t.dim(1) : 2 * t.dim(1), m.dim(1), t.name());
                checked++;
            }
            assertTrue(checked > 0);
        }
    }
}
