package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * MoE experts on a quantized base (src/test/resources/moe_quant, scripts/fixtures/make_moe_quant_fixtures.py):
 * Qwen3-MoE and Mixtral checkpoints whose experts are per-expert FP8 weights (transformers' fine-grained
 * layout, 8x8 blocks or one scale per weight; compressed-tensors' per channel) or GPTQ or AWQ (GEMM) weights, and a PEFT adapter on the fused expert
 * parameters (target_parameters). {@code --to bf16|f16} must write every quantized weight as the
 * reference does (the adapted ones the exact merge of the dequantized weight, rounded once; the others
 * dequantized) in the checkpoint's per-expert form; {@code --to fp8} the codes and weight_scale_inv
 * transformers' own Fp8Quantize writes for those merged values, every other tensor byte for byte the
 * base's (compressed-tensors' refused, naming llm-compressor); GPTQ and AWQ experts {@code --to nf4} one NF4
 * weight per expert projection.
 */
class MoeQuantizedGoldenTest {
    static final Path CASES = Paths.get("src/test/resources/moe_quant");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    private static JsonNode merge(Path caseDir, Path out, String to) throws Exception {
        PrintStream old = System.out;
        PrintStream oldErr = System.err;
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int code;
        try {
            System.setOut(new PrintStream(o, true, StandardCharsets.UTF_8));
            System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
            code = Main.run("merge", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(),
                    "--out", out.toString(), "--to", to, "--device", "cpu", "--json", "--quiet", "--verify", "--verify-rows", "all");
        } finally {
            System.setOut(old);
            System.setErr(oldErr);
        }
        assertEquals(0, code, caseDir + " --to " + to + ": " + e.toString(StandardCharsets.UTF_8));
        return JSON.readTree(o.toString(StandardCharsets.UTF_8));
    }

    private static byte[] bytes(SafetensorsFile f, TensorInfo t) throws Exception {
        ByteBuffer b = f.readAll(t);
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    private static Set<String> changedByPeft(Path caseDir) throws Exception {
        Set<String> out = new TreeSet<>();
        JSON.readTree(caseDir.resolve("case.json").toFile()).get("checkpoint_tensors_changed_by_peft").forEach(n -> out.add(n.asText()));
        return out;
    }

    @ParameterizedTest
    @ValueSource(strings = {"qwen3_moe_fp8_block8", "mixtral_fp8_tensor", "qwen3_moe_ct_fp8_channel", "mixtral_gptq_4bit_g8", "qwen3_moe_awq_4bit_g8"})
    void expertAdaptersMergeIntoTheDequantizedExpertsExactlyInTheirPerExpertForm(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        boolean gptq = name.contains("gptq") || name.contains("awq");
        DType dense = gptq ? DType.F16 : DType.BF16;
        Set<String> changed = changedByPeft(caseDir);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            QuantizedModel q = WeightFormats.detect(base);
            assertEquals(gptq ? "GPTQ/AWQ" : "FP8", q.format().name());
            assertEquals(16, q.weights().size(), "4 attention projections and 3 per expert: " + q.weights().keySet());
            // the planner maps the fused expert parameters onto the per-expert quantized weights, the ones PEFT changed
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults().withTarget(gptq ? QuantTarget.F16 : QuantTarget.BF16));
            Set<String> adapted = new TreeSet<>();
            for (OutputTensor t : plan.tensors()) {
                if (t.isAdapted()) {
                    adapted.add(t.name());
                }
            }
            assertEquals(changed, adapted, name + ": the merge adapts the quantized weights PEFT changed");
            Path out = tmp.resolve("dense");
            JsonNode report = merge(caseDir, out, dense == DType.F16 ? "f16" : "bf16");
            assertEquals(16 - changed.size(), report.get("tensors_dequantized").asLong(), report.toString());
            try (Checkpoint ours = Checkpoint.open(out); SafetensorsFile expected = SafetensorsFile.open(caseDir.resolve("expected_dense.safetensors"))) {
                Set<String> names = new TreeSet<>(base.tensors().keySet());
                names.removeAll(q.groupTensorNames());
                names.addAll(q.weights().keySet());
                assertEquals(names, new TreeSet<>(ours.tensors().keySet()), name + ": the dense model's own tensors, per expert, no scales");
                for (TensorInfo e : expected.tensors()) {
                    TensorInfo o = ours.tensor(e.name());
                    assertNotNull(o, e.name());
                    assertEquals(dense, o.dtype(), e.name());
                    assertArrayEquals(bytes(expected, e), bytes(ours.fileOf(e.name()), o),
                            name + ": " + e.name() + (changed.contains(e.name()) ? " is not the exact merge rounded once" : " is not its dequantized value"));
                }
            }
            JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
            assertFalse(config.has("quantization_config"), "a dequantized model must not claim to be quantized");
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"qwen3_moe_fp8_block8", "mixtral_fp8_tensor"})
    void fp8ExpertsRequantizeAsTransformersFp8QuantizeDoesAndTheRestKeepItsBytes(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        Set<String> changed = changedByPeft(caseDir);
        Path out = tmp.resolve("fp8");
        JsonNode report = merge(caseDir, out, "fp8");
        assertEquals(changed.size(), report.get("requantization").get("tensors").size(), report.toString());
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint base = Checkpoint.open(caseDir.resolve("base"));
             SafetensorsFile expected = SafetensorsFile.open(caseDir.resolve("expected_requant.safetensors"))) {
            assertEquals(new TreeSet<>(base.tensors().keySet()), new TreeSet<>(ours.tensors().keySet()), name + ": the base's own tensors");
            Set<String> requantized = new TreeSet<>();
            for (TensorInfo e : expected.tensors()) {
                TensorInfo o = ours.tensor(e.name());
                assertEquals(e.dtype(), o.dtype(), e.name());
                assertArrayEquals(e.shape(), o.shape(), e.name());
                assertArrayEquals(bytes(expected, e), bytes(ours.fileOf(e.name()), o), name + ": " + e.name() + " differs from transformers' Fp8Quantize");
                requantized.add(e.name());
            }
            for (TensorInfo t : base.tensors().values()) {
                if (!requantized.contains(t.name())) {
                    assertArrayEquals(bytes(base.fileOf(t.name()), t), bytes(ours.fileOf(t.name()), ours.tensor(t.name())), t.name() + " keeps its bytes");
                }
            }
            QuantizedModel q = WeightFormats.detect(ours);
            assertEquals(16, q.weights().size());
            for (String n : changed) {
                assertNotNull(q.weight(n), n + " is an FP8 weight of the output");
            }
        }
        assertEquals(JSON.readTree(Files.readAllBytes(caseDir.resolve("base/config.json"))), JSON.readTree(Files.readAllBytes(out.resolve("config.json"))),
                "an FP8 output keeps its config");
    }

    @Test
    void compressedTensorsFp8ExpertsAreNotRequantizedAndNothingIsWritten() throws Exception {
        Path caseDir = CASES.resolve("qwen3_moe_ct_fp8_channel");
        Path out = tmp.resolve("ct");
        PrintStream old = System.err;
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int code;
        try {
            System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
            code = Main.run("merge", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(),
                    "--out", out.toString(), "--to", "fp8", "--device", "cpu", "--quiet");
        } finally {
            System.setErr(old);
        }
        String err = e.toString(StandardCharsets.UTF_8);
        assertEquals(2, code, err);
        assertTrue(err.contains("experts.0.down_proj.weight") && err.contains("llm-compressor") && err.contains("--to bf16"), err);
        assertFalse(Files.exists(out));
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral_gptq_4bit_g8", "qwen3_moe_awq_4bit_g8"})
    void gptqAndAwqExpertsMergeToOneNf4WeightPerExpertProjection(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        Path out = tmp.resolve("nf4");
        JsonNode report = merge(caseDir, out, "nf4");
        Set<String> changed = changedByPeft(caseDir);
        assertEquals(changed.size(), report.get("requantization").get("tensors").size(), report.toString());
        try (Checkpoint ours = Checkpoint.open(out)) {
            QuantizedModel q = WeightFormats.detect(ours);
            assertEquals("bitsandbytes 4-bit NF4", q.format().name());
            assertEquals(16, q.weights().size(), "every GPTQ weight becomes NF4: " + q.weights().keySet());
            for (String n : changed) {
                QuantizedWeight w = q.weight(n);
                assertNotNull(w, n);
                assertEquals(DType.F16, w.dtype(), n);
            }
            assertNotNull(q.weight(name.startsWith("mixtral") ? "model.layers.0.block_sparse_moe.experts.3.w3.weight"
                    : "model.layers.0.mlp.experts.3.up_proj.weight"));
            assertTrue(ours.tensors().keySet().stream().noneMatch(n -> n.endsWith(".qweight") || n.endsWith(".g_idx") || n.endsWith(".qzeros")));
        }
        JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
        assertEquals("bitsandbytes", config.get("quantization_config").get("quant_method").asText());
    }
}
