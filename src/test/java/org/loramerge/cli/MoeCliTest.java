package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.function.Consumer;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.ModelQuantizer;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * LoRA on MoE experts (target_parameters) on the command line: a merge verifies clean and
 * inspect names the adapted parameters; what cannot be merged is refused with exit 3, a message
 * that names it and says what to do, and nothing written; and a bitsandbytes base (NF4, FP4 or
 * LLM.int8) whose experts are quantized per expert is merged into its dequantized experts.
 */
class MoeCliTest {
    private static final Path MOE = Paths.get("src/test/resources/moe");
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String W1 = "model.layers.1.block_sparse_moe.experts.2.w1.weight";
    private static final String W3 = "model.layers.1.block_sparse_moe.experts.2.w3.weight";

    @TempDir
    Path dir;

    /** A copy of a case's {@code part} (base or adapter) folder, its JSON file {@code json} edited. */
    private Path copy(String caseName, String part, String json, Consumer<ObjectNode> edit) throws IOException {
        Path to = dir.resolve(caseName + "-" + part);
        Files.createDirectories(to);
        try (Stream<Path> s = Files.list(MOE.resolve(caseName).resolve(part))) {
            for (Path p : s.toList()) {
                Files.copy(p, to.resolve(p.getFileName()));
            }
        }
        if (json != null) {
            ObjectNode n = (ObjectNode) JSON.readTree(to.resolve(json).toFile());
            edit.accept(n);
            JSON.writeValue(to.resolve(json).toFile(), n);
        }
        return to;
    }

    private static Path base(String caseName) {
        return MOE.resolve(caseName).resolve("base");
    }

    private static Path adapter(String caseName) {
        return MOE.resolve(caseName).resolve("adapter");
    }

    @ParameterizedTest
    @ValueSource(strings = {"mixtral_experts", "gpt_oss_experts", "qwen3_moe_experts"})
    void anExpertMergeVerifiesCleanOnEveryRow(String caseName) {
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(base(caseName), adapter(caseName), out);
        assertEquals(ExitCodes.OK, r.code(), r.err());
        CliRun.Result v = CliRun.verify(base(caseName), adapter(caseName), out, "--rows", "all", "--max-ulp", "0");
        assertEquals(ExitCodes.OK, v.code(), v.out() + v.err());
    }

    @Test
    void bareParameterNamesInTargetParametersSelectTheExpertsAndLeaveOtherModulesAlone() throws Exception {
        // PEFT matches "gate_up_proj" against every parameter name's end; q_proj's keys stay a module's LoRA
        Path a = copy("mixtral_experts", "adapter", "adapter_config.json", c -> {
            ArrayNode t = c.putArray("target_parameters");
            t.add("gate_up_proj");
            t.add("down_proj");
            t.add("mlp.gate.weight");
        });
        Path bare = dir.resolve("bare");
        Path full = dir.resolve("full");
        assertEquals(ExitCodes.OK, CliRun.merge(base("mixtral_experts"), a, bare).code());
        assertEquals(ExitCodes.OK, CliRun.merge(base("mixtral_experts"), adapter("mixtral_experts"), full).code());
        assertTrue(java.util.Arrays.equals(Files.readAllBytes(full.resolve("model.safetensors")), Files.readAllBytes(bare.resolve("model.safetensors"))),
                "the same merge");
    }

    @Test
    void inspectNamesTheAdaptedParametersWithTheirExpertsAndScale() {
        CliRun.Result r = CliRun.run("inspect", adapter("qwen3_moe_experts").toString());
        assertEquals(ExitCodes.OK, r.code(), r.err());
        // rank_pattern gives layer 1's down_proj r=2, alpha_pattern every down_proj alpha 3: s = 3/2
        assertTrue(r.out().lines().anyMatch(l -> l.contains("model.layers.1.mlp.experts.down_proj (4 experts)") && l.contains(" 2 ")
                && l.contains("1.50000")), r.out());
        assertTrue(r.out().lines().anyMatch(l -> l.contains("model.layers.0.mlp.experts.gate_up_proj (4 experts)") && l.contains("2.00000")), r.out());
    }

    @Test
    void aModelTypeWhoseExpertFormIsUnknownIsRefusedNamingTheKnownOnes() throws Exception {
        Path b = copy("qwen3_moe_experts", "base", "config.json", c -> c.put("model_type", "my_moe"));
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(b, adapter("qwen3_moe_experts"), out);
        CliRun.assertBadInput(r, out, "model_type \"my_moe\"");
        assertTrue(r.err().contains("qwen3_moe") && r.err().contains("mixtral") && r.err().contains("gpt_oss"), r.err());
    }

    @Test
    void aMissingExpertTensorIsNamed() throws Exception {
        Path b = copy("mixtral_experts", "base", "config.json", c -> c.put("num_local_experts", 5));
        Path out = dir.resolve("out");
        CliRun.assertBadInput(CliRun.merge(b, adapter("mixtral_experts"), out), out, "model.layers.0.block_sparse_moe.experts.4.w1.weight");
    }

    @Test
    void aRankThatDoesNotFitTheExpertFactorsIsAConfigMismatch() throws Exception {
        Path a = copy("mixtral_experts", "adapter", "adapter_config.json", c -> c.put("r", 1));
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(base("mixtral_experts"), a, out);
        CliRun.assertBadInput(r, out, "model.layers.0.mlp.experts.gate_up_proj");
        assertTrue(r.err().contains("CONFIG_MISMATCH"), r.err());
    }

    @Test
    void keysNestedDeeperThanTheTargetedParametersAreAConfigMismatch() throws Exception {
        // the config no longer names gate_up_proj, so the .base_layer keys stand for a parameter it does not target
        Path a = copy("mixtral_experts", "adapter", "adapter_config.json", c -> {
            ArrayNode t = c.putArray("target_parameters");
            t.add("mlp.experts.down_proj");
            t.add("mlp.gate.weight");
        });
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(base("mixtral_experts"), a, out);
        CliRun.assertBadInput(r, out, "model.layers.0.mlp.experts.base_layer.lora_A.weight");
        assertTrue(r.err().contains("CONFIG_MISMATCH"), r.err());
    }

    @Test
    void expertKeysWithoutTargetParametersAreNotSilentlyDropped() throws Exception {
        Path a = copy("qwen3_moe_down_proj", "adapter", "adapter_config.json", c -> c.putNull("target_parameters"));
        Path out = dir.resolve("out");
        CliRun.assertBadInput(CliRun.merge(base("qwen3_moe_down_proj"), a, out), out, "model.layers.0.mlp.experts.lora_A.weight");
    }

    @Test
    void anAdapterForExpertsOfAnotherShapeIsAShapeMismatch() {
        // gpt-oss's experts are [E, in, out] with 2I = 32 outputs; Qwen3-MoE's here are [E, 2I = 24, H]
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(base("qwen3_moe_experts"), adapter("gpt_oss_experts"), out);
        CliRun.assertBadInput(r, out, "model.layers.0.mlp.experts.gate_up_proj");
        assertTrue(r.err().contains("SHAPE_MISMATCH"), r.err());
    }

    @Test
    void mxfp4ExpertsAreRefusedWithHowToDequantizeThem() throws Exception {
        // gpt-oss as published: the experts are MXFP4 blocks and scales (U8), which loramerge does not read
        Path b = dir.resolve("mxfp4");
        List<TinyModels.Tensor> tensors = new java.util.ArrayList<>();
        try (Checkpoint c = Checkpoint.open(base("gpt_oss_experts"))) {
            for (TensorInfo t : c.tensors().values()) {
                if (t.name().endsWith("experts.gate_up_proj") || t.name().endsWith("experts.down_proj")) {
                    long e = t.dim(0);
                    long rows = t.dim(2);
                    long blocks = t.dim(1) / 32;
                    tensors.add(new TinyModels.Tensor(t.name() + "_blocks", DType.U8, new long[] {e, rows, blocks, 16}, new byte[(int) (e * rows * blocks * 16)]));
                    tensors.add(new TinyModels.Tensor(t.name() + "_scales", DType.U8, new long[] {e, rows, blocks}, new byte[(int) (e * rows * blocks)]));
                } else {
                    tensors.add(TinyModels.bf16Tensor(t.name(), t.shape()));
                }
            }
        }
        TinyModels.writeModel(b, tensors);
        Files.copy(base("gpt_oss_experts").resolve("config.json"), b.resolve("config.json"), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(b, adapter("gpt_oss_experts"), out);
        CliRun.assertBadInput(r, out, "MXFP4");
        assertTrue(r.err().contains("dequantize"), r.err());
    }

    @Test
    void fusedFp8ExpertsAreRefusedWithHowToDequantizeThem() throws Exception {
        // transformers' FP8Experts layout saved as it is held in memory: one e4m3 [E, d1, d2] tensor and its block scales
        Path b = dir.resolve("fp8");
        List<TinyModels.Tensor> tensors = new ArrayList<>();
        try (Checkpoint c = Checkpoint.open(base("gpt_oss_experts"))) {
            for (TensorInfo t : c.tensors().values()) {
                if (t.name().endsWith("experts.gate_up_proj") || t.name().endsWith("experts.down_proj")) {
                    long n = t.dim(0) * t.dim(1) * t.dim(2);
                    tensors.add(new TinyModels.Tensor(t.name(), DType.F8_E4M3, t.shape(), new byte[(int) n]));
                    tensors.add(new TinyModels.Tensor(t.name() + "_scale_inv", DType.F32, new long[] {t.dim(0), 1, 1}, new byte[(int) t.dim(0) * 4]));
                } else {
                    tensors.add(TinyModels.bf16Tensor(t.name(), t.shape()));
                }
            }
        }
        TinyModels.writeModel(b, tensors);
        Files.copy(base("gpt_oss_experts").resolve("config.json"), b.resolve("config.json"), StandardCopyOption.REPLACE_EXISTING);
        Path out = dir.resolve("out");
        CliRun.Result r = CliRun.merge(b, adapter("gpt_oss_experts"), out);
        CliRun.assertBadInput(r, out, "model.layers.0.mlp.experts.gate_up_proj_scale_inv");
        assertTrue(r.err().contains("FP8Experts") && r.err().contains("dequantize"), r.err());
    }

    @Test
    void useDoraWithTargetParametersIsAnInvalidConfig() throws Exception {
        Path a = copy("gpt_oss_experts", "adapter", "adapter_config.json", c -> c.put("use_dora", true));
        Path out = dir.resolve("out");
        CliRun.assertBadInput(CliRun.merge(base("gpt_oss_experts"), a, out), out, "use_dora");
    }

    /**
     * A 4-bit base whose experts were quantized per expert (as transformers 4 and bitsandbytes did
     * with Mixtral's nn.Linear experts; here by loramerge quantize), with either code book:
     * --to bf16 merges into the dequantized experts, so the change written is the change PEFT made
     * to the 16-bit experts, to within the roundings of both; --to nf4 (fp4) requantizes the
     * adapted experts with the base's code book and keeps the bytes of the others.
     */
    @ParameterizedTest
    @ValueSource(strings = {"nf4", "fp4"})
    void aFourBitBaseWithPerExpertWeightsTakesAnExpertAdapter(String code) throws Exception {
        Path q = dir.resolve(code);
        CliRun.Result quantized = CliRun.run("quantize", "--base", base("mixtral_experts").toString(), "--out", q.toString(), "--blocksize", "32",
                "--quant-type", code);
        assertEquals(ExitCodes.OK, quantized.code(), quantized.err());
        String state = W1 + ".quant_state.bitsandbytes__" + code;
        try (Checkpoint c = Checkpoint.open(q)) {
            assertEquals(code, c.config().path("quantization_config").path("bnb_4bit_quant_type").asText(), "the base is " + code);
            assertTrue(c.tensor(state) != null, "the expert is quantized with the " + code + " code book");
        }
        assertChangeIsPefts(q);
        Path four = dir.resolve(code + "-merged");
        CliRun.Result r4 = CliRun.merge(q, adapter("mixtral_experts"), four, "--to", code, "--json");
        assertEquals(ExitCodes.OK, r4.code(), r4.err());
        assertOnlyTheAdaptedWeightsRequantized(q, r4);
        try (Checkpoint merged = Checkpoint.open(four); Checkpoint before = Checkpoint.open(q)) {
            assertEquals(DType.U8, merged.tensor(W1).dtype(), "the expert stays 4-bit");
            assertTrue(merged.tensor(state) != null, "the expert keeps the " + code + " code book");
            assertTrue(!sameBytes(merged, before, W1), "the adapted expert is requantized");
            assertTrue(sameBytes(merged, before, "model.layers.1.self_attn.k_proj.weight"), "an unadapted 4-bit weight keeps its bytes");
        }
        CliRun.Result v = CliRun.verify(q, adapter("mixtral_experts"), four, "--to", code);
        assertEquals(ExitCodes.OK, v.code(), v.out() + v.err());
    }

    /**
     * An LLM.int8 base whose experts were quantized per expert, as transformers 4 and bitsandbytes
     * saved Mixtral loaded with load_in_8bit (each nn.Linear an I8 weight, its F32 row absmax SCB
     * and weight_format 0): --to bf16 merges into the dequantized experts (the change is PEFT's to
     * within the roundings), --to int8 requantizes the adapted experts row by row and keeps the
     * bytes of the others.
     */
    @Test
    void anInt8BaseWithPerExpertWeightsTakesAnExpertAdapter() throws Exception {
        Path q = int8Base(dir.resolve("int8"));
        assertChangeIsPefts(q);
        Path eight = dir.resolve("int8-merged");
        CliRun.Result r8 = CliRun.merge(q, adapter("mixtral_experts"), eight, "--to", "int8", "--json");
        assertEquals(ExitCodes.OK, r8.code(), r8.err());
        assertOnlyTheAdaptedWeightsRequantized(q, r8);
        String scb = W1.replace(".weight", ".SCB");
        String k = "model.layers.1.self_attn.k_proj";
        try (Checkpoint merged = Checkpoint.open(eight); Checkpoint before = Checkpoint.open(q)) {
            assertEquals(DType.I8, merged.tensor(W1).dtype(), "the expert stays 8-bit");
            assertEquals(DType.F32, merged.tensor(scb).dtype(), "the expert keeps its row scales");
            assertTrue(!sameBytes(merged, before, W1), "the adapted expert is requantized");
            for (String name : List.of(k + ".weight", k + ".SCB", k + ".weight_format", "model.layers.0.self_attn.v_proj.SCB")) {
                assertTrue(sameBytes(merged, before, name), "an unadapted 8-bit tensor keeps its bytes: " + name);
            }
        }
        CliRun.Result v = CliRun.verify(q, adapter("mixtral_experts"), eight, "--to", "int8");
        assertEquals(ExitCodes.OK, v.code(), v.out() + v.err());
    }

    /**
     * The quantized base {@code q} merged --to bf16: in the adapted experts the change from the
     * dequantized base (an empty adapter merged --to bf16) is the change PEFT made to the 16-bit
     * experts, to within the bf16 roundings of both.
     */
    private void assertChangeIsPefts(Path q) throws Exception {
        Path dense = dir.resolve(q.getFileName() + "-bf16");
        CliRun.Result r = CliRun.merge(q, adapter("mixtral_experts"), dense, "--to", "bf16");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        Path deq = dir.resolve(q.getFileName() + "-deq");
        CliRun.Result plain = CliRun.run("merge", "--base", q.toString(), "--adapter", emptyAdapter().toString(), "--out", deq.toString(),
                "--device", "cpu", "--quiet", "--to", "bf16", "--allow-empty-adapter");
        assertEquals(ExitCodes.OK, plain.code(), plain.err());
        try (Checkpoint ours = Checkpoint.open(dense); Checkpoint dequantized = Checkpoint.open(deq); Checkpoint base = Checkpoint.open(base("mixtral_experts"));
             Checkpoint peft = Checkpoint.open(MOE.resolve("mixtral_experts/peft"))) {
            for (String name : List.of(W1, W3)) {
                double[] o = values(ours, name);
                double[] d = values(dequantized, name);
                double[] b = values(base, name);
                double[] p = values(peft, name);
                FloatFormat bf16 = FloatFormat.BF16;
                for (int i = 0; i < o.length; i++) {
                    double ourDelta = o[i] - d[i];
                    double peftDelta = p[i] - b[i];
                    double tol = bf16.ulp(o[i]) + bf16.ulp(p[i]) + bf16.ulp(peftDelta);
                    assertTrue(Math.abs(ourDelta - peftDelta) <= tol, name + "[" + i + "]: merged into the dequantized expert the change is "
                            + ourDelta + ", PEFT's on the 16-bit expert " + peftDelta);
                }
            }
        }
    }

    /**
     * The mixtral_experts base as bitsandbytes saves it loaded with load_in_8bit: every weight that
     * {@code loramerge quantize} would quantize (transformers' nn.Linear modules, so every expert
     * projection and the router; not the embeddings, norms or lm_head) becomes {@code P.weight} I8,
     * {@code P.SCB} F32 and {@code P.weight_format} U8 0, coded as Int8Params does: the values cast
     * to fp16, SCB = each row's absmax, code = round(127 · x / SCB), half to even; the other tensors
     * keep their bytes. config.json gets bitsandbytes' load_in_8bit quantization_config.
     */
    private static Path int8Base(Path to) throws Exception {
        Path from = base("mixtral_experts");
        List<TinyModels.Tensor> tensors = new ArrayList<>();
        try (Checkpoint c = Checkpoint.open(from)) {
            for (TensorInfo t : c.tensors().values()) {
                if (ModelQuantizer.skipReason(t.name(), t) != null) {
                    byte[] bytes = new byte[Math.toIntExact(t.sizeInBytes())];
                    c.fileOf(t.name()).readAll(t).get(bytes);
                    tensors.add(new TinyModels.Tensor(t.name(), t.dtype(), t.shape(), bytes));
                    continue;
                }
                int rows = Math.toIntExact(t.dim(0));
                int cols = Math.toIntExact(t.dim(1));
                double[] x = values(c, t.name());
                byte[] codes = new byte[rows * cols];
                ByteBuffer scb = ByteBuffer.allocate(4 * rows).order(ByteOrder.LITTLE_ENDIAN);
                for (int row = 0; row < rows; row++) {
                    float absmax = 0f;
                    for (int col = 0; col < cols; col++) {
                        absmax = Math.max(absmax, (float) Math.abs(FloatFormat.F16.round(x[row * cols + col])));
                    }
                    for (int col = 0; col < cols; col++) {
                        float h = (float) FloatFormat.F16.round(x[row * cols + col]);
                        codes[row * cols + col] = absmax == 0f ? 0 : (byte) Math.rint(h * (127f / absmax));
                    }
                    scb.putFloat(absmax);
                }
                String stem = t.name().substring(0, t.name().length() - ".weight".length());
                tensors.add(new TinyModels.Tensor(t.name(), DType.I8, t.shape(), codes));
                tensors.add(new TinyModels.Tensor(stem + ".SCB", DType.F32, new long[] {rows}, scb.array()));
                tensors.add(new TinyModels.Tensor(stem + ".weight_format", DType.U8, new long[] {}, new byte[] {0}));
            }
        }
        TinyModels.writeSafetensors(to.resolve("model.safetensors"), tensors);
        ObjectNode config = (ObjectNode) JSON.readTree(from.resolve("config.json").toFile());
        config.set("quantization_config", JSON.readTree("{\"_load_in_4bit\": false, \"_load_in_8bit\": true, \"bnb_4bit_compute_dtype\": "
                + "\"float32\", \"bnb_4bit_quant_storage\": \"uint8\", \"bnb_4bit_quant_type\": \"fp4\", \"bnb_4bit_use_double_quant\": false, "
                + "\"llm_int8_enable_fp32_cpu_offload\": false, \"llm_int8_has_fp16_weight\": false, \"llm_int8_skip_modules\": null, "
                + "\"llm_int8_threshold\": 6.0, \"load_in_4bit\": false, \"load_in_8bit\": true, \"quant_method\": \"bitsandbytes\"}"));
        JSON.writeValue(to.resolve("config.json").toFile(), config);
        Files.copy(from.resolve("generation_config.json"), to.resolve("generation_config.json"));
        return to;
    }

    /**
     * The quantized weights the mixtral_experts adapter changes: every expert's w1, w2 and w3 and
     * the router (target_parameters) and q_proj (target_modules), in both layers.
     */
    private static Set<String> adaptedWeights() {
        Set<String> out = new TreeSet<>();
        for (int layer = 0; layer < 2; layer++) {
            String moe = "model.layers." + layer + ".block_sparse_moe.";
            for (int e = 0; e < 4; e++) {
                for (String w : List.of("w1", "w2", "w3")) {
                    out.add(moe + "experts." + e + "." + w + ".weight");
                }
            }
            out.add(moe + "gate.weight");
            out.add("model.layers." + layer + ".self_attn.q_proj.weight");
        }
        return out;
    }

    /**
     * A requantizing merge --json of the mixtral_experts adapter into the quantized base {@code q}
     * reports the adapted weights as requantized, and copies every other tensor (requantizing an
     * unadapted weight would give it the same bytes, so only the count of copies tells them apart).
     */
    private static void assertOnlyTheAdaptedWeightsRequantized(Path q, CliRun.Result r) throws Exception {
        JsonNode report = JSON.readTree(r.out());
        Set<String> requantized = new TreeSet<>();
        for (JsonNode t : report.path("requantization").path("tensors")) {
            requantized.add(t.path("name").asText());
        }
        assertEquals(adaptedWeights(), requantized, "the adapted weights are requantized");
        long others;
        try (Checkpoint base = Checkpoint.open(q)) {
            others = base.tensors().keySet().stream()
                    .filter(n -> adaptedWeights().stream().noneMatch(w -> n.startsWith(w.substring(0, w.length() - "weight".length()))))
                    .count();
        }
        assertEquals(others, report.path("tensors_copied").asLong(), "every tensor outside the adapted weights' groups is copied");
    }

    private Path emptyAdapter() throws IOException {
        Path a = dir.resolve("empty-adapter");
        TinyModels.writeAdapter(a, TinyModels.loraConfig(2, 4, "[\"q_proj\"]", ""), List.of());
        return a;
    }

    private static double[] values(Checkpoint c, String name) throws IOException {
        TensorInfo t = c.tensor(name);
        FloatFormat f = FloatFormat.of(t.dtype());
        double[] out = new double[(int) t.numElements()];
        try (MappedRegion r = c.fileOf(name).map(t, 0, t.sizeInBytes())) {
            for (int i = 0; i < out.length; i++) {
                out[i] = f.decode(f.bitsAt(r.bytes(), i));
            }
        }
        return out;
    }

    private static boolean sameBytes(Checkpoint a, Checkpoint b, String name) throws IOException {
        try (MappedRegion x = a.fileOf(name).map(a.tensor(name), 0, a.tensor(name).sizeInBytes());
             MappedRegion y = b.fileOf(name).map(b.tensor(name), 0, b.tensor(name).sizeInBytes())) {
            return x.bytes().equals(y.bytes());
        }
    }
}
