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
 * The golden FP8 cases of src/test/resources/fp8 (scripts/fixtures/make_fp8_fixtures.py): FP8 bases in
 * transformers' fine-grained layout (quantized by transformers' own Fp8Quantize, 128x128 blocks and one
 * scale per tensor) and in compressed-tensors' float-quantized layout, what transformers dequantizes
 * them to, a PEFT adapter and PEFT's merge. loramerge must read each weight's layout, dequantize it to
 * transformers' bytes exactly, and merge {@code --to bf16} into those values exactly (so within PEFT's
 * own rounding of PEFT's merge), dropping the scales and quantization_config.
 */
class Fp8GoldenTest {
    static final Path FP8 = Paths.get("src/test/resources/fp8");
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
    @ValueSource(strings = {"fine_grained_128", "fine_grained_tensor", "compressed_tensors"})
    void eachWeightDequantizesToTransformersBytesAndMergesExactly(String name) throws Exception {
        Path caseDir = FP8.resolve(name);
        Path base = caseDir.resolve("base");
        try (Checkpoint b = Checkpoint.open(base); SafetensorsFile expected = SafetensorsFile.open(caseDir.resolve("expected_dequant.safetensors"))) {
            QuantizedModel q = WeightFormats.detect(b);
            assertEquals("FP8", q.format().name());
            assertEquals(7, q.weights().size(), q.weights().keySet().toString());
            Fp8Weight qProj = (Fp8Weight) q.weight("model.layers.0.self_attn.q_proj.weight");
            Fp8Weight down = (Fp8Weight) q.weight("model.layers.0.mlp.down_proj.weight");
            switch (name) {
                case "fine_grained_128":
                    assertEquals(Fp8Weight.Scheme.BLOCK, down.scheme());
                    assertTrue(down.describe().contains("128x128 block"), down.describe());
                    break;
                case "fine_grained_tensor":
                    assertEquals(Fp8Weight.Scheme.TENSOR, down.scheme());
                    break;
                default:
                    assertEquals(Fp8Weight.Scheme.CHANNEL, qProj.scheme());
                    assertEquals(DType.BF16, qProj.productDtype(), "compressed-tensors multiplies in the scale's dtype");
                    assertEquals(Fp8Weight.Scheme.TENSOR, down.scheme());
                    assertTrue(q.groupTensorNames().contains("model.layers.0.self_attn.q_proj.input_scale"));
                    break;
            }
            // 1. the dequantized values are transformers' (or compressed-tensors' restated), byte for byte
            for (TensorInfo e : expected.tensors()) {
                QuantizedWeight w = q.weight(e.name());
                assertNotNull(w, e.name());
                assertEquals(DType.BF16, w.dtype());
                ByteBuffer deq = ByteBuffer.allocate((int) e.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                w.dequantizeTo(0, (int) w.numElements(), deq);
                assertArrayEquals(bytes(expected, e), deq.array(), e.name() + " differs from the dequantization of " + name);
            }
            // 2. merge --to bf16: adapted weights exact, the rest dequantized, the scales and quantization_config gone
            Path out = tmp.resolve("out");
            JsonNode report = JSON.readTree(run("merge", "--base", base.toString(), "--adapter", caseDir.resolve("adapter").toString(),
                    "--out", out.toString(), "--to", "bf16", "--device", "cpu", "--json", "--quiet", "--verify", "--verify-rows", "all"));
            assertEquals(4, report.get("tensorsDequantized").asLong(), report.toString());
            try (Checkpoint ours = Checkpoint.open(out); SafetensorsFile peft = SafetensorsFile.open(caseDir.resolve("peft.safetensors"))) {
                Set<String> names = new TreeSet<>(ours.tensors().keySet());
                assertTrue(names.stream().noneMatch(n -> n.contains("scale")), names.toString());
                for (QuantizedWeight w : q.weights().values()) {
                    TensorInfo o = ours.tensor(w.weightName());
                    assertEquals(DType.BF16, o.dtype());
                    assertArrayEquals(w.shape(), o.shape());
                }
                // PEFT merges the same values in fp32 and rounds once: at most 1 ulp apart, and rarely
                FloatFormat bf16 = FloatFormat.BF16;
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
            assertFalse(config.has("quantization_config"), "a dequantized model must not claim to be FP8");
            assertEquals("bfloat16", config.get("dtype").asText());
        }
    }
}
