package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Fp8Output;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;
import org.loramerge.quant.WeightFormats;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code merge --to fp8} of GPTQ and AWQ bases: src/test/resources/gptq_fp8
 * (scripts/fixtures/make_gptq_fp8_fixtures.py: GPTQ v1 4-bit act-order, GPTQ v2 8-bit, AWQ 4-bit, each
 * with a PEFT adapter, PEFT's merge of q_proj, and transformers' Fp8Quantize of that merge and of two
 * weights the adapter leaves alone). loramerge must write transformers' fine-grained FP8 layout with
 * Fp8Quantize's codes and scales for the same values, convert every quantized weight, and give
 * config.json transformers' FP8 quantization_config.
 */
class GptqToFp8GoldenTest {
    static final Path CASES = Paths.get("src/test/resources/gptq_fp8");
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final List<String> UNTOUCHED = List.of("model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight");
    private static final String MERGED = "model.layers.0.self_attn.q_proj.weight";

    @TempDir
    Path tmp;

    private static byte[] bytes(SafetensorsFile f, String name) throws Exception {
        ByteBuffer b = f.readAll(f.tensor(name));
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    private static String scaleOf(String weight) {
        return weight.replace(".weight", ".weight_scale_inv");
    }

    /** Runs the CLI; returns {exit code, stdout, stderr}. */
    private static Object[] cli(String... args) {
        PrintStream out = System.out;
        PrintStream err = System.err;
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int code;
        try {
            System.setOut(new PrintStream(o, true, StandardCharsets.UTF_8));
            System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
            code = Main.run(args);
        } finally {
            System.setOut(out);
            System.setErr(err);
        }
        return new Object[] {code, o.toString(StandardCharsets.UTF_8), e.toString(StandardCharsets.UTF_8)};
    }

    @ParameterizedTest
    @ValueSource(strings = {"gptq_v1_4bit_g32_actorder", "gptq_v2_8bit_g64", "awq_gemm_4bit_g32"})
    void aGptqOrAwqBaseMergesToFp8AsTransformersQuantizesIt(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        Path base = caseDir.resolve("base");
        // 1. the requantizer, given PEFT's merged values, writes the codes and scales transformers' Fp8Quantize writes for them
        try (Checkpoint b = Checkpoint.open(base);
             SafetensorsFile peft = SafetensorsFile.open(caseDir.resolve("peft.safetensors"));
             SafetensorsFile want = SafetensorsFile.open(caseDir.resolve("expected_fp8.safetensors"))) {
            QuantizedWeight w = WeightFormats.detect(b).weight(MERGED);
            Requantizer r = Fp8Output.forDense(w.dtype(), w.shape()).requantizer(w);
            int n = Math.toIntExact(w.numElements());
            ByteBuffer dequantized = ByteBuffer.allocate(n * 2).order(ByteOrder.LITTLE_ENDIAN);
            w.dequantizeTo(0, n, dequantized);
            r.encode(0, n, peft.readAll(peft.tensor(MERGED)), dequantized, new double[n]);
            byte[] codes = new byte[n];
            r.codes(0, n).get(codes);
            assertArrayEquals(bytes(want, MERGED), codes, MERGED + " codes");
            r.finish();
            byte[] scales = new byte[r.tail().get(0).remaining()];
            r.tail().get(0).get(scales);
            assertArrayEquals(bytes(want, scaleOf(MERGED)), scales, MERGED + " weight_scale_inv");
        }
        // 2. the CLI: every quantized weight in transformers' FP8 layout, the untouched ones Fp8Quantize's bytes, config.json its config
        Path out = tmp.resolve("fp8");
        Object[] r = cli("merge", "--base", base.toString(), "--adapter", caseDir.resolve("adapter").toString(), "--out", out.toString(),
                "--to", "fp8", "--device", "cpu", "--json", "--quiet", "--verify", "--verify-rows", "all");
        assertEquals(0, r[0], (String) r[2]);
        JsonNode report = JSON.readTree((String) r[1]);
        assertEquals(3, report.get("requantization").get("tensors").size(), "survival of the three adapted weights");
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint b = Checkpoint.open(base);
             SafetensorsFile want = SafetensorsFile.open(caseDir.resolve("expected_fp8.safetensors"))) {
            QuantizedModel q = WeightFormats.detect(ours);
            assertEquals("FP8", q.format().name());
            assertEquals(7, q.weights().size(), "the weights the adapter leaves alone are converted too: the output holds one format");
            for (QuantizedWeight qw : q.weights().values()) {
                Fp8Weight f = (Fp8Weight) qw;
                assertEquals(Fp8Weight.Scheme.BLOCK, f.scheme(), f.weightName());
                assertEquals(128, f.blockRows(), f.weightName());
                assertEquals(128, f.blockCols(), f.weightName());
                assertEquals(DType.F8_E4M3, ours.tensor(f.weightName()).dtype());
                assertEquals(DType.F32, ours.tensor(scaleOf(f.weightName())).dtype());
            }
            assertTrue(ours.tensors().keySet().stream().noneMatch(t -> t.endsWith(".qweight") || t.endsWith(".qzeros") || t.endsWith(".scales")
                    || t.endsWith(".g_idx")), ours.tensors().keySet().toString());
            for (String u : UNTOUCHED) {
                assertArrayEquals(bytes(want, u), bytes(ours.fileOf(u), u), u + " codes");
                assertArrayEquals(bytes(want, scaleOf(u)), bytes(ours.fileOf(scaleOf(u)), scaleOf(u)), u + " weight_scale_inv");
            }
            for (String dense : new String[] {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}) {
                assertArrayEquals(bytes(b.fileOf(dense), dense), bytes(ours.fileOf(dense), dense), dense + " stays as it was");
            }
        }
        ObjectNode config = (ObjectNode) JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
        assertEquals(JSON.readTree("{\"activation_scheme\": \"dynamic\", \"dequantize\": false, \"modules_to_convert\": null, "
                + "\"modules_to_not_convert\": null, \"quant_method\": \"fp8\", \"scale_fmt\": \"float\", \"weight_block_size\": [128, 128]}"),
                config.get("quantization_config"));
        ObjectNode baseConfig = (ObjectNode) JSON.readTree(Files.readAllBytes(base.resolve("config.json")));
        config.remove("quantization_config");
        baseConfig.remove("quantization_config");
        assertEquals(baseConfig, config, "only quantization_config changes");
    }

    /**
     * A base with dense 2-D weights besides lm_head and the embedding (a router, a projection left
     * unquantized): config.json lists them and lm_head in modules_to_not_convert, which replaces
     * transformers' default, so that its loader makes no FP8 layer of them; a name that also begins
     * a quantized module's name (mlp.gate of mlp.gate_proj) is anchored with $.
     */
    @Test
    void denseLinearWeightsOfTheBaseAreListedInModulesToNotConvert() throws Exception {
        Path caseDir = CASES.resolve("gptq_v2_8bit_g64");
        Path base = tmp.resolve("base");
        List<TinyModels.Tensor> tensors = new ArrayList<>();
        try (SafetensorsFile f = SafetensorsFile.open(caseDir.resolve("base/model.safetensors"))) {
            for (TensorInfo t : f.tensors()) {
                tensors.add(new TinyModels.Tensor(t.name(), t.dtype(), t.shape(), bytes(f, t.name())));
            }
        }
        tensors.add(new TinyModels.Tensor("model.layers.0.mlp.gate.weight", DType.F16, new long[] {8, 128}, TinyModels.f16(TinyModels.values(8 * 128, 3))));
        tensors.add(new TinyModels.Tensor("model.vision_proj.weight", DType.F16, new long[] {128, 128}, TinyModels.f16(TinyModels.values(128 * 128, 4))));
        TinyModels.writeSafetensors(base.resolve("model.safetensors"), tensors);
        Files.copy(caseDir.resolve("base/config.json"), base.resolve("config.json"));
        Path out = tmp.resolve("fp8");
        Object[] r = cli("merge", "--base", base.toString(), "--adapter", caseDir.resolve("adapter").toString(), "--out", out.toString(),
                "--to", "fp8", "--device", "cpu", "--quiet");
        assertEquals(0, r[0], (String) r[2]);
        JsonNode skip = JSON.readTree(Files.readAllBytes(out.resolve("config.json"))).get("quantization_config").get("modules_to_not_convert");
        Set<String> names = new TreeSet<>();
        skip.forEach(n -> names.add(n.asText()));
        assertEquals(Set.of("model.layers.0.mlp.gate$", "model.vision_proj", "lm_head"), names);
        try (Checkpoint ours = Checkpoint.open(out)) {
            assertEquals(DType.F16, ours.tensor("model.vision_proj.weight").dtype(), "the dense weights stay dense");
            assertEquals(7, WeightFormats.detect(ours).weights().size());
        }
    }

    @Test
    void withoutToTheMessageOffersFp8ForAGptqBase() {
        Path caseDir = CASES.resolve("gptq_v2_8bit_g64");
        Object[] r = cli("merge", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(), "--out",
                tmp.resolve("x").toString(), "--quiet");
        assertEquals(2, r[0]);
        assertTrue(((String) r[2]).contains("--to fp8: dequantize, merge, quantize to FP8 e4m3 with a scale per 128x128 block"), (String) r[2]);
        assertFalse(Files.exists(tmp.resolve("x")));
    }

    @Test
    void aGptqWeightThatBlocksDoNotDivideIsRefusedNamingItAndWritesNothing() {
        Path caseDir = QuantizedBaseGoldenTest.GPTQ_AWQ.resolve("gptq_v1_4bit_g32_actorder"); // 64-wide weights
        Object[] r = cli("merge", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(), "--out",
                tmp.resolve("x").toString(), "--to", "fp8", "--device", "cpu", "--quiet");
        String err = (String) r[2];
        assertEquals(3, r[0], err);
        assertTrue(err.matches("(?s).*tensor 'model\\.layers\\.0\\.[a-z_.]+\\.weight': is \\[64, (64|128)], which FP8's 128x128 blocks do not divide.*")
                && err.contains("nor 6 other of the 7 quantized weights")
                && err.contains("--to bf16") && err.contains("--to nf4"), err);
        assertFalse(Files.exists(tmp.resolve("x")));
    }
}
