package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** {@code loramerge quantize} end to end on a tiny Llama-shaped model built from bytes. */
class QuantizeCommandTest {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String CONFIG = "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"dtype\": \"bfloat16\",\n  \"hidden_size\": 64,\n"
            + "  \"model_type\": \"llama\",\n  \"tie_word_embeddings\": false,\n  \"vocab_size\": 32\n}\n";
    private static final Set<String> QUANTIZED = Set.of("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.mlp.up_proj.weight");

    @TempDir
    Path tmp;

    private static double[] values(int n, long seed, double std) {
        Random r = new Random(seed);
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = r.nextGaussian() * std;
        }
        return v;
    }

    private static QuantModels.Tensor t(String name, DType dtype, long[] shape, long seed) {
        int n = (int) Arrays.stream(shape).reduce(1, (a, b) -> a * b);
        double[] v = values(n, seed, 0.05);
        if (name.endsWith("up_proj.weight")) {
            Arrays.fill(v, 128, 192, 0.0); // an all-zero block (for blocksizes up to 64) inside row 1
        }
        return new QuantModels.Tensor(name, dtype, shape, QuantModels.encode(dtype, v));
    }

    /** A tiny Llama: embeddings, two attention projections, an MLP projection with an odd element count, norms, a bias, lm_head. */
    private Path tinyModel(DType dtype) throws Exception {
        List<QuantModels.Tensor> ts = new ArrayList<>();
        ts.add(t("model.embed_tokens.weight", dtype, new long[] {32, 64}, 1));
        ts.add(t("model.layers.0.input_layernorm.weight", dtype, new long[] {64}, 2));
        ts.add(t("model.layers.0.self_attn.q_proj.weight", dtype, new long[] {64, 64}, 3));
        ts.add(t("model.layers.0.self_attn.k_proj.weight", dtype, new long[] {32, 64}, 4));
        ts.add(t("model.layers.0.self_attn.k_proj.bias", dtype, new long[] {32}, 5));
        ts.add(t("model.layers.0.mlp.up_proj.weight", dtype, new long[] {33, 97}, 6)); // 3201 elements: odd, blocks cross rows
        ts.add(new QuantModels.Tensor("model.layers.0.position_ids", DType.I64, new long[] {2}, new byte[16]));
        ts.add(t("model.norm.weight", dtype, new long[] {64}, 7));
        ts.add(t("lm_head.weight", dtype, new long[] {32, 64}, 8));
        Path dir = QuantModels.write(tmp.resolve("base"), ts, CONFIG.replace("bfloat16", dtype.torchName()));
        Files.writeString(dir.resolve("generation_config.json"), "{\"bos_token_id\": 1}\n");
        return dir;
    }

    private static int run(String... args) {
        PrintStream err = System.err;
        System.setErr(new PrintStream(new ByteArrayOutputStream()));
        try {
            return Main.run(args);
        } finally {
            System.setErr(err);
        }
    }

    private static String runForStdout(String... args) {
        PrintStream out = System.out;
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        System.setOut(new PrintStream(buf, true, StandardCharsets.UTF_8));
        try {
            assertEquals(0, run(args));
        } finally {
            System.setOut(out);
        }
        return buf.toString(StandardCharsets.UTF_8);
    }

    @Test
    void writesTheBitsandbytesLayoutBitExactAndCopiesTheRest() throws Exception {
        checkQuantize(DType.BF16, false, 64);
    }

    @Test
    void doubleQuantF16WithAnotherBlocksize() throws Exception {
        checkQuantize(DType.F16, true, 32);
    }

    private void checkQuantize(DType dtype, boolean doubleQuant, int blocksize) throws Exception {
        Path base = tinyModel(dtype);
        Path out = tmp.resolve("nf4");
        List<String> args = new ArrayList<>(List.of("quantize", "--base", base.toString(), "--out", out.toString(), "--json",
                "--blocksize", Integer.toString(blocksize)));
        if (doubleQuant) {
            args.add("--double-quant");
        }
        JsonNode summary = JSON.readTree(runForStdout(args.toArray(new String[0])));
        assertEquals(3, summary.get("tensors_quantized").asInt());
        assertEquals(6, summary.get("tensors_copied").asInt());
        assertTrue(summary.get("worst_error_over_absmax").asDouble() <= 0.152);
        Set<String> skipped = new TreeSet<>();
        summary.get("skipped").forEach(s -> skipped.add(s.get("name").asText()));
        assertEquals(Set.of("lm_head.weight", "model.embed_tokens.weight"), skipped);

        try (Checkpoint in = Checkpoint.open(base); Checkpoint q = Checkpoint.open(out)) {
            Nf4Detector.Result r = Nf4Detector.detect(q);
            assertEquals(new Bnb4BitConfig(doubleQuant, dtype), r.config());
            assertEquals(QUANTIZED, r.weights().keySet());
            assertTrue(r.warnings().isEmpty(), r.warnings().toString());
            for (TensorInfo t : in.tensors().values()) {
                if (QUANTIZED.contains(t.name())) {
                    checkWeight(in, q, r.weight(t.name()), t, doubleQuant, blocksize);
                } else {
                    TensorInfo copy = q.tensor(t.name());
                    assertEquals(t.dtype(), copy.dtype());
                    assertArrayEquals(t.shape(), copy.shape());
                    assertEquals(in.fileOf(t.name()).readAll(t), q.fileOf(t.name()).readAll(copy), t.name());
                }
            }
            // nothing but the groups and the copies
            assertEquals(in.tensors().size() - 3 + 3 * (doubleQuant ? 6 : 4), q.tensors().size());
            JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
            assertEquals("llama", config.get("model_type").asText());
            assertEquals(Bnb4BitConfig.toJson(doubleQuant, dtype), config.get("quantization_config"));
        }
        assertEquals("{\"bos_token_id\": 1}\n", Files.readString(out.resolve("generation_config.json")));
        try (Stream<Path> s = Files.list(tmp)) {
            assertEquals(Set.of("base", "nf4"), s.map(p -> p.getFileName().toString()).collect(java.util.stream.Collectors.toSet()),
                    "no partial folder left behind");
        }
    }

    /** The group equals an independent block-by-block quantization of the source, and dequantizes within the NF4 bound. */
    private static void checkWeight(Checkpoint in, Checkpoint q, Nf4Tensor nf4, TensorInfo src, boolean doubleQuant, int blocksize)
            throws Exception {
        FloatFormat fmt = FloatFormat.of(src.dtype());
        ByteBuffer raw = in.fileOf(src.name()).readAll(src);
        int n = (int) src.numElements();
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) fmt.decode(fmt.bitsAt(raw, i));
        }
        int blocks = (n + blocksize - 1) / blocksize;
        byte[] codes = new byte[n];
        float[] absmax = new float[blocks];
        for (int b = 0; b < blocks; b++) {
            absmax[b] = Nf4Codec.quantizeBlock(x, b * blocksize, Math.min(blocksize, n - b * blocksize), codes, b * blocksize);
        }
        byte[] packed = new byte[(n + 1) / 2];
        Nf4Codec.pack(codes, 0, n, packed, 0, Nf4Codec.paddingCode(absmax[blocks - 1]));
        assertArrayEquals(packed, bytes(q, src.name()), src.name());
        assertArrayEquals(new long[] {(n + 1) / 2, 1}, q.tensor(src.name()).shape());
        QuantState.Nested nested = null;
        if (doubleQuant) {
            DoubleQuant.Result dq = DoubleQuant.quantize(absmax, blocks);
            assertArrayEquals(dq.codes(), bytes(q, src.name() + Nf4Tensor.ABSMAX));
            nested = new QuantState.Nested(256, dq.offset());
            assertArrayEquals(DynamicMap.signed(), floats(q, src.name() + Nf4Tensor.NESTED_QUANT_MAP));
        } else {
            assertArrayEquals(absmax, floats(q, src.name() + Nf4Tensor.ABSMAX));
        }
        assertArrayEquals(Nf4Codec.quantMap(), floats(q, src.name() + Nf4Tensor.QUANT_MAP));
        assertArrayEquals(QuantState.of(blocksize, src.dtype(), src.shape(), nested).toJson(), bytes(q, src.name() + QuantState.TENSOR_SUFFIX));

        float[] deq = new float[n];
        Nf4Decoder d = nf4.decoder();
        d.dequantize(0, n, deq, 0);
        float[] decodedAbsmax = d.absmax(0, blocks);
        for (int i = 0; i < n; i++) {
            float a = absmax[i / blocksize];
            // NF4's largest half gap is 0.1519; double quantization adds the 8-bit error of the absmax itself
            double bound = doubleQuant ? 0.152 * a + Math.abs(decodedAbsmax[i / blocksize] - a) : 0.152 * a;
            assertTrue(Math.abs(deq[i] - x[i]) <= bound + 1e-7, src.name() + " element " + i);
        }
        // the zero block of up_proj takes code 0 (-1.0), as bitsandbytes' kernel gives it: it decodes to minus its
        // decoded absmax, which is -0.0 with a plain absmax and a small value with double quantization
        if (src.name().endsWith("up_proj.weight")) {
            assertEquals(0f, absmax[128 / blocksize]);
            for (int i = 128; i < 192; i++) {
                assertEquals(Float.floatToRawIntBits(-decodedAbsmax[i / blocksize]), Float.floatToRawIntBits(deq[i]));
            }
        }
    }

    private static byte[] bytes(Checkpoint c, String name) throws Exception {
        SafetensorsFile f = c.fileOf(name);
        ByteBuffer b = f.readAll(c.tensor(name));
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    private static float[] floats(Checkpoint c, String name) throws Exception {
        ByteBuffer b = c.fileOf(name).readAll(c.tensor(name));
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    @Test
    void refusalsMapToExitCodesAndLeaveNothingBehind() throws Exception {
        Path base = tinyModel(DType.BF16);
        Path out = tmp.resolve("nf4");
        assertEquals(0, run("quantize", "--base", base.toString(), "--out", out.toString(), "--quiet"));
        // the output exists: 4 (output), then replaced with --overwrite
        assertEquals(4, run("quantize", "--base", base.toString(), "--out", out.toString(), "--quiet"));
        assertEquals(0, run("quantize", "--base", base.toString(), "--out", out.toString(), "--quiet", "--overwrite", "--double-quant"));
        // quantizing a quantized model: bad input
        assertEquals(3, run("quantize", "--base", out.toString(), "--out", tmp.resolve("again").toString(), "--quiet"));
        // a blocksize bitsandbytes has no kernel for: usage
        assertEquals(2, run("quantize", "--base", base.toString(), "--out", tmp.resolve("bs").toString(), "--blocksize", "100"));
        // writing into the input: refused
        assertEquals(4, run("quantize", "--base", base.toString(), "--out", base.resolve("inside").toString(), "--quiet"));
        // a NaN in a weight: bad input, no output
        List<QuantModels.Tensor> ts;
        try (SafetensorsFile f = SafetensorsFile.open(base.resolve("model.safetensors"))) {
            ts = QuantModels.read(f);
        }
        ts.replaceAll(t -> {
            if (!t.name().endsWith("k_proj.weight")) {
                return t;
            }
            byte[] d = t.data().clone();
            d[200] = (byte) 0xC0; // bf16 0x7FC0 = NaN
            d[201] = (byte) 0x7F;
            return new QuantModels.Tensor(t.name(), t.dtype(), t.shape(), d);
        });
        Path bad = QuantModels.write(tmp.resolve("bad"), ts, CONFIG);
        for (String dq : new String[] {"--blocksize=64", "--double-quant"}) {
            assertEquals(3, run("quantize", "--base", bad.toString(), "--out", tmp.resolve("badout").toString(), "--quiet", dq));
            assertFalse(Files.exists(tmp.resolve("badout")));
        }
        try (Stream<Path> s = Files.list(tmp)) {
            assertTrue(s.noneMatch(p -> p.getFileName().toString().startsWith(".")), "no partial folder left behind");
        }
    }
}
