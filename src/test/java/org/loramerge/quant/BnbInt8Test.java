package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * bitsandbytes 8-bit (LLM.int8) weights as transformers saves them: I8 codes, F32 row scales (SCB) and
 * weight_format 0. Hand-built: the values follow bitsandbytes' int8_vectorwise_dequant formula,
 * checked here in double against the fp32 steps it takes, and {@code --to int8} codes each row against
 * its fp16 absmax; the bitsandbytes fixture script (scripts/fixtures/make_bnb_fixtures.py) checks real
 * bitsandbytes models on the GPU machine.
 */
class BnbInt8Test {
    static final String CONFIG = "{\"model_type\": \"llama\", \"dtype\": \"float16\", \"quantization_config\": {\"quant_method\": "
            + "\"bitsandbytes\", \"load_in_8bit\": true, \"_load_in_8bit\": true, \"load_in_4bit\": false}}";

    @TempDir
    Path dir;

    private Path model(byte weightFormat) throws Exception {
        byte[] codes = new byte[4 * 6];
        for (int i = 0; i < codes.length; i++) {
            codes[i] = (byte) ((i * 37) % 255 - 127);
        }
        ByteBuffer scb = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN);
        for (float s : new float[] {0.031f, 1.7f, 0f, 123.25f}) {
            scb.putFloat(s);
        }
        return QuantModels.write(dir.resolve("m" + weightFormat), List.of(
                new QuantModels.Tensor("model.layers.0.self_attn.q_proj.weight", DType.I8, new long[] {4, 6}, codes),
                new QuantModels.Tensor("model.layers.0.self_attn.q_proj.SCB", DType.F32, new long[] {4}, scb.array()),
                new QuantModels.Tensor("model.layers.0.self_attn.q_proj.weight_format", DType.U8, new long[] {}, new byte[] {weightFormat}),
                new QuantModels.Tensor("model.norm.weight", DType.F16, new long[] {6}, new byte[12])), CONFIG);
    }

    @Test
    void int8WeightsDequantizeAsBitsandbytesDoesInFloat32() throws Exception {
        try (Checkpoint c = Checkpoint.open(model((byte) 0))) {
            QuantizedModel q = WeightFormats.detect(c);
            assertEquals("bitsandbytes 8-bit (LLM.int8)", q.format().name());
            QuantizedWeight w = q.weight("model.layers.0.self_attn.q_proj.weight");
            assertEquals("int8", w.kind());
            assertEquals(DType.F32, w.dtype());
            assertEquals(3, q.groupTensorNames().size());
            ByteBuffer out = ByteBuffer.allocate(4 * 24).order(ByteOrder.LITTLE_ENDIAN);
            w.dequantizeTo(0, 24, out);
            float[] scb = {0.031f, 1.7f, 0f, 123.25f};
            for (int i = 0; i < 24; i++) {
                int code = (byte) ((i * 37) % 255 - 127);
                // two fp32 roundings: the product q * SCB, then times fp32(7.874015718698502e-3)
                float want = (float) ((double) (float) ((double) code * scb[i / 6]) * (double) 7.874015718698502e-3f);
                assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(out.getFloat(4 * i)), "element " + i);
            }
        }
    }

    @Test
    void anInt8BaseMergesDenseAndOldLayoutsAreRefused() throws Exception {
        Path base = model((byte) 0);
        Path adapter = TinyModels.writeAdapter(dir.resolve("a"), TinyModels.loraConfig(2, 4, "[\"q_proj\"]", ""),
                TinyModels.loraPair("model.layers.0.self_attn.q_proj", 2, 6, 4));
        Path out = dir.resolve("out");
        assertEquals(0, Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", out.toString(), "--to", "f16",
                "--device", "cpu", "--quiet", "--verify", "--verify-rows", "all"));
        try (Checkpoint c = Checkpoint.open(out)) {
            TensorInfo t = c.tensor("model.layers.0.self_attn.q_proj.weight");
            assertEquals(DType.F16, t.dtype());
            assertTrue(c.tensor("model.layers.0.self_attn.q_proj.SCB") == null && c.tensor("model.layers.0.self_attn.q_proj.weight_format") == null);
        }
        try (Checkpoint c = Checkpoint.open(model((byte) 2))) {
            QuantException e = assertThrows(QuantException.class, () -> WeightFormats.detect(c));
            assertEquals(QuantException.Reason.UNSUPPORTED_CONFIG, e.reason());
            assertTrue(e.getMessage().contains("weight_format") && e.getMessage().contains("re-save"), e.getMessage());
        }
        // --to int8: each row of the merged weight, in fp16, coded against its own absmax (SCB) as bitsandbytes' kernel does
        Path int8 = dir.resolve("int8");
        assertEquals(0, Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", int8.toString(), "--to", "int8",
                "--device", "cpu", "--quiet", "--verify"));
        try (Checkpoint merged = Checkpoint.open(out); Checkpoint c = Checkpoint.open(int8)) {
            TensorInfo codes = c.tensor("model.layers.0.self_attn.q_proj.weight");
            assertEquals(DType.I8, codes.dtype());
            ByteBuffer q = c.fileOf(codes.name()).readAll(codes);
            ByteBuffer scb = c.fileOf("model.layers.0.self_attn.q_proj.SCB").readAll(c.tensor("model.layers.0.self_attn.q_proj.SCB"));
            TensorInfo f16 = merged.tensor(codes.name());
            ByteBuffer x = merged.fileOf(f16.name()).readAll(f16);
            org.loramerge.format.FloatFormat h = org.loramerge.format.FloatFormat.F16;
            for (int row = 0; row < 4; row++) {
                float absmax = 0;
                for (int col = 0; col < 6; col++) {
                    absmax = Math.max(absmax, (float) Math.abs(h.decode(h.bitsAt(x, row * 6 + col))));
                }
                assertEquals(absmax, scb.getFloat(4 * row), "row " + row + "'s SCB is the absmax of its fp16 merged values");
                for (int col = 0; col < 6; col++) {
                    double v = h.decode(h.bitsAt(x, row * 6 + col));
                    double step = absmax / 127.0;
                    assertTrue(Math.abs(q.get(row * 6 + col) * step - v) <= step / 2 + 1e-6 * absmax, "row " + row + " col " + col);
                }
            }
        }
    }

    /**
     * merge --combine on an 8-bit base: the weight is dequantized once, the combined delta applied and
     * requantized once (--to int8) or rounded once (--to f16); cat of the adapter with itself at 0.5 and
     * 0.5 writes the merge of the adapter alone, byte for byte, and the same survival figures.
     */
    @Test
    void catOfAnAdapterWithItselfOnAnInt8BaseIsTheMergeOfTheAdapter() throws Exception {
        Path base = model((byte) 0);
        Path adapter = TinyModels.writeAdapter(dir.resolve("a"), TinyModels.loraConfig(2, 4, "[\"q_proj\"]", ""),
                TinyModels.loraPair("model.layers.0.self_attn.q_proj", 2, 6, 4));
        for (String to : List.of("int8", "f16")) {
            Path single = dir.resolve("single-" + to);
            Path combined = dir.resolve("combined-" + to);
            CliRun a = CliRun.of(() -> Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out",
                    single.toString(), "--to", to, "--device", "cpu", "--quiet", "--json"));
            assertEquals(0, a.code(), a.err());
            CliRun b = CliRun.of(() -> Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--adapter",
                    adapter.toString(), "--combine", "cat", "--weights", "0.5,0.5", "--out", combined.toString(), "--to", to, "--device", "cpu",
                    "--quiet", "--json", "--verify"));
            assertEquals(0, b.code(), b.err());
            Map<String, String> x = TinyModels.hashTree(single);
            Map<String, String> y = TinyModels.hashTree(combined);
            x.remove("README.md"); // the model card names the combination
            y.remove("README.md");
            assertEquals(x, y, "--to " + to + ": W + 0.5·s·B·A + 0.5·s·B·A is W + s·B·A exactly, dequantized once and rounded once");
            if (to.equals("int8")) {
                JsonNode ra = new ObjectMapper().readTree(a.out()).get("requantization");
                JsonNode rb = new ObjectMapper().readTree(b.out()).get("requantization");
                assertEquals(1, rb.get("tensors").size(), b.out());
                assertEquals(ra.get("survival").asDouble(), rb.get("survival").asDouble(), 0.0);
                assertEquals(ra.get("codes_changed").asLong(), rb.get("codes_changed").asLong());
            }
        }
    }
}
