package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The golden cases of quantized bases other than NF4: src/test/resources/fp8
 * (scripts/fixtures/make_fp8_fixtures.py: FP8 in transformers' fine-grained layout, quantized by
 * transformers' own Fp8Quantize with 128x128 blocks or one scale per tensor, and in compressed-tensors'
 * float-quantized layout) and src/test/resources/gptq_awq (scripts/fixtures/make_gptq_awq_fixtures.py: GPTQ
 * v1 4-bit act-order, GPTQ v2 8-bit, AWQ GEMM 4-bit), each with what its library dequantizes it to, a
 * PEFT adapter and PEFT's merge. loramerge must read each weight's layout, dequantize it to those bytes
 * exactly, and merge {@code --to bf16|f16} into those values exactly (so within PEFT's own rounding of
 * PEFT's merge), dropping the scales and quantization_config.
 */
class QuantizedBaseGoldenTest {
    static final Path FP8 = Paths.get("src/test/resources/fp8");
    static final Path GPTQ_AWQ = Paths.get("src/test/resources/gptq_awq");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    private static byte[] bytes(SafetensorsFile f, TensorInfo t) throws Exception {
        ByteBuffer b = f.readAll(t);
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    private static String run(String... args) {
        PrintStream old = System.out;
        ByteArrayOutputStream o = new ByteArrayOutputStream();
        try {
            System.setOut(new PrintStream(o, true, StandardCharsets.UTF_8));
            assertEquals(0, Main.run(args), String.join(" ", args));
        } finally {
            System.setOut(old);
        }
        return o.toString(StandardCharsets.UTF_8);
    }

    @ParameterizedTest
    @ValueSource(strings = {"fp8/fine_grained_128", "fp8/fine_grained_tensor", "fp8/compressed_tensors", "gptq_awq/gptq_v1_4bit_g32_actorder",
        "gptq_awq/gptq_v2_8bit_one_group", "gptq_awq/awq_gemm_4bit_g32"})
    void eachWeightDequantizesToItsLibrarysBytesAndMergesExactly(String path) throws Exception {
        Path caseDir = Paths.get("src/test/resources").resolve(path);
        String name = caseDir.getFileName().toString();
        boolean fp8 = path.startsWith("fp8/");
        DType dense = fp8 ? DType.BF16 : DType.F16;
        Path base = caseDir.resolve("base");
        try (Checkpoint b = Checkpoint.open(base); SafetensorsFile expected = SafetensorsFile.open(caseDir.resolve("expected_dequant.safetensors"))) {
            QuantizedModel q = WeightFormats.detect(b);
            assertEquals(fp8 ? "FP8" : "GPTQ/AWQ", q.format().name());
            assertEquals(7, q.weights().size(), q.weights().keySet().toString());
            QuantizedWeight qw = q.weight("model.layers.0.self_attn.q_proj.weight");
            QuantizedWeight dw = q.weight("model.layers.0.mlp.down_proj.weight");
            switch (name) {
                case "fine_grained_128":
                    assertEquals(Fp8Weight.Scheme.BLOCK, ((Fp8Weight) dw).scheme());
                    assertTrue(dw.describe().contains("128x128 block"), dw.describe());
                    break;
                case "fine_grained_tensor":
                    assertEquals(Fp8Weight.Scheme.TENSOR, ((Fp8Weight) dw).scheme());
                    break;
                case "compressed_tensors":
                    assertEquals(Fp8Weight.Scheme.CHANNEL, ((Fp8Weight) qw).scheme());
                    assertEquals(DType.BF16, ((Fp8Weight) qw).productDtype(), "compressed-tensors multiplies in the scale's dtype");
                    assertEquals(Fp8Weight.Scheme.TENSOR, ((Fp8Weight) dw).scheme());
                    assertTrue(q.groupTensorNames().contains("model.layers.0.self_attn.q_proj.input_scale"));
                    break;
                case "gptq_v1_4bit_g32_actorder":
                    assertEquals("GPTQ (gptq zeros) 4-bit, group size 32, act-order, float16", qw.describe());
                    assertTrue(q.groupTensorNames().contains("model.layers.0.self_attn.q_proj.g_idx"));
                    break;
                case "gptq_v2_8bit_one_group":
                    assertEquals("GPTQ (gptq_v2 zeros) 8-bit, one group, float16", qw.describe());
                    break;
                default:
                    assertEquals("AWQ (GEMM) 4-bit, group size 32, float16", qw.describe());
                    break;
            }
            // 1. the dequantized values are transformers' (or compressed-tensors' restated), byte for byte
            for (TensorInfo e : expected.tensors()) {
                QuantizedWeight w = q.weight(e.name());
                assertNotNull(w, e.name());
                assertEquals(dense, w.dtype());
                ByteBuffer deq = ByteBuffer.allocate((int) e.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                w.dequantizeTo(0, (int) w.numElements(), deq);
                assertArrayEquals(bytes(expected, e), deq.array(), e.name() + " differs from the dequantization of " + name);
            }
            // 2. merge --to bf16: adapted weights exact, the rest dequantized, the scales and quantization_config gone
            Path out = tmp.resolve("out");
            JsonNode report = JSON.readTree(run("merge", "--base", base.toString(), "--adapter", caseDir.resolve("adapter").toString(),
                    "--out", out.toString(), "--to", fp8 ? "bf16" : "f16", "--device", "cpu", "--json", "--quiet", "--verify", "--verify-rows", "all"));
            assertEquals(4, report.get("tensors_dequantized").asLong(), report.toString());
            try (Checkpoint ours = Checkpoint.open(out); SafetensorsFile peft = SafetensorsFile.open(caseDir.resolve("peft.safetensors"))) {
                Set<String> names = new TreeSet<>(ours.tensors().keySet());
                assertTrue(names.stream().noneMatch(n -> n.contains("scale") || n.endsWith(".qweight") || n.endsWith(".qzeros") || n.endsWith("g_idx")), names.toString());
                for (QuantizedWeight w : q.weights().values()) {
                    TensorInfo o = ours.tensor(w.weightName());
                    assertEquals(dense, o.dtype());
                    assertArrayEquals(w.shape(), o.shape());
                }
                // PEFT merges the same values in fp32 and rounds once: at most 1 ulp apart, and rarely
                FloatFormat bf16 = FloatFormat.of(dense);
                for (TensorInfo p : peft.tensors()) {
                    TensorInfo o = ours.tensor(p.name());
                    ByteBuffer a = ours.fileOf(o.name()).readAll(o);
                    ByteBuffer c = peft.readAll(p);
                    int differ = 0;
                    for (long i = 0; i < p.numElements(); i++) {
                        int x = bf16.bitsAt(a, i);
                        int y = bf16.bitsAt(c, i);
                        if (x != y) {
                            differ++;
                            assertTrue(Math.abs(x - y) <= 1, p.name() + " element " + i + ": " + x + " vs PEFT's " + y);
                        }
                    }
                    assertTrue(differ * 100L < p.numElements(), p.name() + ": " + differ + " elements differ from PEFT's merge");
                }
            }
            JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
            assertFalse(config.has("quantization_config"), "a dequantized model must not claim to be quantized");
            assertEquals(dense.torchName(), config.get("dtype").asText());
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"gptq_v1_4bit_g32_actorder", "awq_gemm_4bit_g32"})
    void aGptqOrAwqBaseMergesToNf4WithBitsandbytesConfigAndRefusesItsOwnFormat(String name) throws Exception {
        Path caseDir = GPTQ_AWQ.resolve(name);
        String base = caseDir.resolve("base").toString();
        String adapter = caseDir.resolve("adapter").toString();
        Path out = tmp.resolve("nf4");
        JsonNode report = JSON.readTree(run("merge", "--base", base, "--adapter", adapter, "--out", out.toString(), "--to", "nf4",
                "--device", "cpu", "--json", "--quiet", "--verify"));
        assertEquals(3, report.get("requantization").get("tensors").size(), "survival of the three adapted weights");
        try (Checkpoint ours = Checkpoint.open(out)) {
            QuantizedModel q = WeightFormats.detect(ours);
            assertEquals("bitsandbytes 4-bit NF4", q.format().name());
            assertEquals(7, q.weights().size(), "unadapted weights are converted too: the output holds one format");
            assertTrue(ours.tensors().keySet().stream().noneMatch(n -> n.endsWith(".qweight") || n.endsWith(".g_idx")));
            assertEquals(DType.F16, q.weight("model.layers.0.mlp.up_proj.weight").dtype());
        }
        JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
        assertEquals("bitsandbytes", config.get("quantization_config").get("quant_method").asText());
        assertEquals("float16", config.get("quantization_config").get("bnb_4bit_compute_dtype").asText());
        // requantizing to GPTQ or AWQ needs calibration data: refused, naming the alternatives (exit 2); --to fp8 of these 64-wide
        // weights, which 128x128 blocks do not divide, is refused as bad input (exit 3)
        for (String to : new String[] {"gptq", "awq", "fp8"}) {
            PrintStream old = System.err;
            ByteArrayOutputStream e = new ByteArrayOutputStream();
            int code;
            try {
                System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
                code = Main.run("merge", "--base", base, "--adapter", adapter, "--out", tmp.resolve(to).toString(), "--to", to, "--quiet");
            } finally {
                System.setErr(old);
            }
            String err = e.toString(StandardCharsets.UTF_8);
            assertEquals(to.equals("fp8") ? 3 : 2, code, err);
            assertTrue(err.contains("--to bf16") && err.contains("--to nf4") && (to.equals("fp8") ? err.contains("128x128 blocks do not divide")
                    : err.contains("calibration") && err.contains("--to fp8")), err);
            assertFalse(Files.exists(tmp.resolve(to)));
        }
    }

    /**
     * --to fp8 on transformers' fine-grained layout: the codes and weight_scale_inv transformers' own
     * Fp8Quantize writes for a merged weight (the generator quantized PEFT's merge; the requantizer is
     * given the same values here), and the CLI's output: the base's layout and grid, a survival figure,
     * and a second merge that finds nothing left to do (verify).
     */
    @ParameterizedTest
    @ValueSource(strings = {"fine_grained_128", "fine_grained_tensor"})
    void fp8RequantizesAsTransformersFp8QuantizeDoes(String name) throws Exception {
        Path caseDir = FP8.resolve(name);
        try (Checkpoint b = Checkpoint.open(caseDir.resolve("base"));
             SafetensorsFile peft = SafetensorsFile.open(caseDir.resolve("peft.safetensors"));
             SafetensorsFile want = SafetensorsFile.open(caseDir.resolve("requant_of_peft.safetensors"))) {
            QuantizedModel q = WeightFormats.detect(b);
            for (TensorInfo p : peft.tensors()) {
                Fp8Weight w = (Fp8Weight) q.weight(p.name());
                org.loramerge.quant.Requantizer r = w.requantizedOutput().requantizer(w);
                int n = (int) w.numElements();
                ByteBuffer x = peft.readAll(p);
                ByteBuffer base = ByteBuffer.allocate(n * 2).order(ByteOrder.LITTLE_ENDIAN);
                w.dequantizeTo(0, n, base);
                double[] delta = new double[n];
                for (int start = 0; start < n; start += r.blockElements()) {
                    int count = Math.min(r.blockElements(), n - start);
                    r.encode(start, count, x.duplicate().position(start * 2).slice().order(ByteOrder.LITTLE_ENDIAN),
                            base.duplicate().position(start * 2).slice().order(ByteOrder.LITTLE_ENDIAN), delta);
                    byte[] codes = new byte[count];
                    r.codes(start, count).get(codes);
                    byte[] expected = new byte[count];
                    want.readAll(want.tensor(p.name())).position(start).get(expected);
                    assertArrayEquals(expected, codes, p.name() + " codes from " + start);
                }
                r.finish();
                String scale = p.name().replace(".weight", ".weight_scale_inv");
                byte[] scales = new byte[(int) want.tensor(scale).sizeInBytes()];
                r.tail().get(0).get(scales);
                assertArrayEquals(bytes(want, want.tensor(scale)), scales, scale);
            }
        }
        Path out = tmp.resolve("fp8");
        String adapter = caseDir.resolve("adapter").toString();
        JsonNode report = JSON.readTree(run("merge", "--base", caseDir.resolve("base").toString(), "--adapter", adapter, "--out", out.toString(),
                "--to", "fp8", "--device", "cpu", "--json", "--quiet", "--verify", "--verify-rows", "all"));
        assertEquals(3, report.get("requantization").get("tensors").size());
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint b = Checkpoint.open(caseDir.resolve("base"))) {
            for (TensorInfo t : b.tensors().values()) {
                TensorInfo o = ours.tensor(t.name());
                assertNotNull(o, t.name());
                assertEquals(t.dtype(), o.dtype(), t.name());
                assertArrayEquals(t.shape(), o.shape(), t.name());
            }
            assertEquals(b.tensors().keySet(), ours.tensors().keySet());
            QuantizedModel q = WeightFormats.detect(ours);
            assertEquals(7, q.weights().size());
            assertEquals(((Fp8Weight) WeightFormats.detect(b).weight("model.layers.0.mlp.down_proj.weight")).scheme(),
                    ((Fp8Weight) q.weight("model.layers.0.mlp.down_proj.weight")).scheme());
        }
        JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
        assertEquals(JSON.readTree(Files.readAllBytes(caseDir.resolve("base/config.json"))), config, "an FP8 output keeps its config");
    }

    @org.junit.jupiter.api.Test
    void compressedTensorsFp8IsNotRequantizedAndSaysWhatToDo() throws Exception {
        Path caseDir = FP8.resolve("compressed_tensors");
        PrintStream old = System.err;
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        int code;
        try {
            System.setErr(new PrintStream(e, true, StandardCharsets.UTF_8));
            code = Main.run("merge", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString(),
                    "--out", tmp.resolve("x").toString(), "--to", "fp8", "--quiet");
        } finally {
            System.setErr(old);
        }
        assertEquals(2, code, e.toString(StandardCharsets.UTF_8));
        assertTrue(e.toString(StandardCharsets.UTF_8).contains("llm-compressor"), e.toString(StandardCharsets.UTF_8));
    }
}
