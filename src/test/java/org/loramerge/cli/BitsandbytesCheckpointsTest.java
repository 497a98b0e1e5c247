package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Checkpoints that transformers and bitsandbytes 0.50.1 (built from source, on the GPU machine) saved
 * themselves, in src/test/resources/bnb (scripts/fixtures/make_bnb_fixtures.sh): loramerge reads every
 * 4-bit and 8-bit model of them, dequantizes it to bitsandbytes' own values, writes a merge back in
 * the model's format as bitsandbytes quantizes the merged values, and quantizes a 16-bit model as
 * transformers' save_pretrained of the model loaded in 4 bits does.
 */
class BitsandbytesCheckpointsTest {
    static final Path BNB = Path.of("src/test/resources/bnb");
    static final Path MODELS = BNB.resolve("models");
    static final Path ADAPTER = BNB.resolve("adapter");
    static final String RERUN = "scripts/fixtures/make_bnb_fixtures.sh writes it on the GPU machine (its header says how to bring it back)";
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path dir;

    /** Every model bitsandbytes quantized: {nf4,fp4}-{dq,plain}-{bf16,f16,f32} and int8. */
    static Stream<String> quantizedModels() throws IOException {
        try (Stream<Path> s = Files.list(MODELS)) {
            return s.map(p -> p.getFileName().toString()).filter(n -> !n.startsWith("base-")).sorted().toList().stream();
        }
    }

    /** The model's format as {@code merge --to} names it. */
    static String kind(String model) {
        return model.equals("int8") ? "int8" : model.substring(0, model.indexOf('-'));
    }

    /** The 16-bit (or f32) model bitsandbytes quantized. */
    static Path baseOf(String model) {
        return MODELS.resolve(model.equals("int8") ? "base-f16" : "base-" + model.substring(model.lastIndexOf('-') + 1));
    }

    @Test
    void theFixtureHoldsEveryFormatBitsandbytesWrites() throws IOException {
        List<String> models = quantizedModels().toList();
        List<String> want = new ArrayList<>();
        for (String q : List.of("fp4", "nf4")) {
            for (String dq : List.of("dq", "plain")) {
                for (String d : List.of("bf16", "f16", "f32")) {
                    want.add(q + "-" + dq + "-" + d);
                }
            }
        }
        want.add("int8");
        assertEquals(new TreeSet<>(want), new TreeSet<>(models));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedModels")
    void everyModelBitsandbytesSavedIsInspectedAndMergesToBf16(String model) throws Exception {
        Path path = MODELS.resolve(model);
        CliRun.Result inspect = CliRun.run("inspect", "--json", path.toString());
        assertEquals(0, inspect.code(), inspect.err());
        JsonNode weights = JSON.readTree(inspect.out()).get("quantization").get("weights");
        assertEquals(14, weights.size(), "every linear weight of the two layers: " + inspect.out());
        String label = switch (kind(model)) {
            case "nf4" -> "NF4 (bitsandbytes)";
            case "fp4" -> "FP4 (bitsandbytes)";
            default -> "LLM.int8 (bitsandbytes)";
        };
        String format = switch (kind(model)) {
            case "nf4" -> "bitsandbytes 4-bit NF4";
            case "fp4" -> "bitsandbytes 4-bit FP4";
            default -> "bitsandbytes 8-bit (LLM.int8)";
        };
        assertEquals(format, JSON.readTree(inspect.out()).get("quantization").get("format").asText(), "the model's format, its quant type included");
        for (JsonNode w : weights) {
            assertTrue(w.get("description").asText().startsWith(label), w.toString());
            assertEquals(model.contains("-dq-"), w.get("description").asText().contains("double-quantized"), w.toString());
        }

        Path out = dir.resolve("bf16");
        CliRun.Result merge = CliRun.merge(path, ADAPTER, out, "--to", "bf16");
        assertEquals(0, merge.code(), merge.err());
        try (Checkpoint merged = Checkpoint.open(out); Checkpoint base = Checkpoint.open(baseOf(model));
             Checkpoint source = Checkpoint.open(path)) {
            assertFalse(WeightFormats.detect(merged).isQuantized(), "--to bf16 writes a dense model");
            assertEquals(base.tensors().keySet(), merged.tensors().keySet(), "the dense model's tensors");
            java.util.Set<String> quantized = WeightFormats.detect(source).weights().keySet();
            for (TensorInfo t : merged.tensors().values()) {
                // the quantized weights dequantized to bf16; the model's dense tensors (embeddings, norms, lm_head) kept as they are
                assertEquals(quantized.contains(t.name()) ? DType.BF16 : source.tensor(t.name()).dtype(), t.dtype(), t.name());
                assertArrayEquals(base.tensor(t.name()).shape(), t.shape(), t.name());
            }
        }
    }

    /**
     * bitsandbytes' dequantization of every quantized weight (dequantize_4bit, int8_vectorwise_dequant on the
     * GPU, of the weights read back from the saved file), as dequant/MODEL.json lists it: dtype, shape and
     * the sha256 of the values' bytes.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedModels")
    void everyQuantizedWeightDequantizesToBitsandbytesOwnValues(String model) throws Exception {
        Path ref = BNB.resolve("dequant").resolve(model + ".json");
        assertTrue(Files.isRegularFile(ref), "no " + ref + ": " + RERUN);
        JsonNode want = JSON.readTree(Files.readAllBytes(ref)).get("weights");
        try (Checkpoint c = Checkpoint.open(MODELS.resolve(model))) {
            QuantizedModel q = WeightFormats.detect(c);
            List<String> names = new ArrayList<>();
            want.fieldNames().forEachRemaining(names::add);
            assertEquals(new TreeSet<>(names), new TreeSet<>(q.weights().keySet()), "the quantized weights");
            for (QuantizedWeight w : q.weights().values()) {
                JsonNode e = want.get(w.weightName());
                assertEquals(e.get("dtype").asText(), w.dtype().name(), w.weightName());
                assertEquals(e.get("shape").toString(), JSON.valueToTree(w.shape()).toString(), w.weightName());
                ByteBuffer values = ByteBuffer.allocate(Math.toIntExact(w.numElements() * w.dtype().sizeInBytes())).order(ByteOrder.LITTLE_ENDIAN);
                w.dequantizeTo(0, Math.toIntExact(w.numElements()), values);
                assertEquals(e.get("sha256").asText(), sha256(values.array()), w.weightName() + ": bitsandbytes dequantizes it to other values");
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedModels")
    void mergingBackToTheModelsFormatWritesBitsandbytesQuantizationOfTheMergedValues(String model) throws Exception {
        assertMergeWritesTheExpectedBytes(model, "cpu", dir.resolve("out"));
    }

    /**
     * {@code merge --to KIND} on {@code device}: every tensor of expected/MODEL (bitsandbytes' quantization of
     * the merged values of the weights the adapter changes) is in the output with the same dtype, shape and
     * bytes; every other tensor is the model's own.
     */
    static void assertMergeWritesTheExpectedBytes(String model, String device, Path out) throws Exception {
        Path expected = BNB.resolve("expected").resolve(model);
        assertTrue(Files.isRegularFile(expected.resolve("model.safetensors")), "no " + expected + ": " + RERUN);
        CliRun.Result r = CliRun.run("merge", "--base", MODELS.resolve(model).toString(), "--adapter", ADAPTER.toString(),
                "--out", out.toString(), "--to", kind(model), "--device", device, "--quiet");
        assertEquals(0, r.code(), r.err());
        Map<String, Tensor> got = tensors(out);
        Map<String, Tensor> base = tensors(MODELS.resolve(model));
        Map<String, Tensor> want = tensors(expected);
        assertEquals(base.keySet(), got.keySet(), "the model's tensors, in its format");
        assertTrue(want.size() >= 12, "expected/ holds the groups of the six adapted weights: " + want.keySet());
        for (Map.Entry<String, Tensor> e : got.entrySet()) {
            Tensor w = want.getOrDefault(e.getKey(), base.get(e.getKey()));
            String what = want.containsKey(e.getKey()) ? "bitsandbytes' quantization of the merged values" : "the model's own tensor";
            assertEquals(w.describe(), e.getValue().describe(), e.getKey());
            if (model.endsWith("-dq-f32") && want.containsKey(e.getKey())) {
                assertSameUpToTheOffsetsLastBit(model, e.getKey(), want, got);   // see the f32 quantize test below
                continue;
            }
            assertTrue(Arrays.equals(w.bytes(), e.getValue().bytes()), e.getKey() + " is not " + what
                    + (e.getKey().contains("quant_state") ? ":\n  want " + w.text() + "\n  got  " + e.getValue().text() : ""));
        }
    }

    /** The models whose every byte {@code loramerge quantize} reproduces (and the f32 double-quantized ones, below). */
    static Stream<String> quantizedAsSaved() throws IOException {
        return quantizedModels().filter(m -> !m.equals("int8") && !m.endsWith("-dq-f32"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedAsSaved")
    void quantizeWritesWhatTransformersSavePretrainedWrote(String model) throws Exception {
        Path out = quantize(model);
        Map<String, Tensor> ours = tensors(out);
        Map<String, Tensor> theirs = tensors(MODELS.resolve(model));
        assertEquals(theirs.keySet(), ours.keySet());
        for (String name : theirs.keySet()) {
            assertEquals(theirs.get(name).describe(), ours.get(name).describe(), name);
            assertTrue(Arrays.equals(theirs.get(name).bytes(), ours.get(name).bytes()), name + " differs");
        }
        assertEquals(JSON.readTree(Files.readAllBytes(MODELS.resolve(model).resolve("config.json"))),
                JSON.readTree(Files.readAllBytes(out.resolve("config.json"))), "config.json, quantization_config included");
    }

    /**
     * An f32 model's absmax values have full 24-bit significands, so torch's fp32 sum behind bitsandbytes'
     * offset rounds its partial sums in an order of its own (docs/QLORA.md): there loramerge's offset (the
     * exact sum rounded once, times 1/n) may be an ulp from bitsandbytes', which moves nested_absmax by as
     * much; every code and every other byte is the same.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("f32DoubleQuantized")
    void anF32DoubleQuantizedModelDiffersFromBitsandbytesAtMostInTheLastBitOfItsOffset(String model) throws Exception {
        Path out = quantize(model);
        Map<String, Tensor> ours = tensors(out);
        Map<String, Tensor> theirs = tensors(MODELS.resolve(model));
        assertEquals(theirs.keySet(), ours.keySet());
        for (String name : theirs.keySet()) {
            assertSameUpToTheOffsetsLastBit(model, name, theirs, ours);
        }
    }

    /**
     * {@code ours[name]} is {@code theirs[name]} byte for byte, or, for the quant state and the nested absmax
     * only, differs by the offset's last bit and what that moves.
     */
    static void assertSameUpToTheOffsetsLastBit(String model, String name, Map<String, Tensor> theirs, Map<String, Tensor> ours)
            throws IOException {
        Tensor a = theirs.get(name);
        Tensor b = ours.get(name);
        if (Arrays.equals(a.bytes(), b.bytes())) {
            return;
        }
        if (name.endsWith(".quant_state.bitsandbytes__" + kind(model))) {
            ObjectMapper m = new ObjectMapper();
            com.fasterxml.jackson.databind.node.ObjectNode qa = (com.fasterxml.jackson.databind.node.ObjectNode) m.readTree(a.bytes());
            com.fasterxml.jackson.databind.node.ObjectNode qb = (com.fasterxml.jackson.databind.node.ObjectNode) m.readTree(b.bytes());
            float oa = qa.remove("nested_offset").floatValue();
            float ob = qb.remove("nested_offset").floatValue();
            assertEquals(qa, qb, name + " beyond the offset");
            assertTrue(Math.abs(oa - ob) <= Math.ulp(oa), name + ": offsets " + oa + " and " + ob + " are more than an ulp apart");
        } else if (name.endsWith(".nested_absmax")) {
            assertEquals(a.describe(), b.describe(), name);
            String state = name.substring(0, name.length() - ".nested_absmax".length()) + ".quant_state.bitsandbytes__" + kind(model);
            float oa = (float) JSON.readTree(theirs.get(state).bytes()).get("nested_offset").doubleValue();
            float na = ByteBuffer.wrap(a.bytes()).order(ByteOrder.LITTLE_ENDIAN).getFloat();
            float nb = ByteBuffer.wrap(b.bytes()).order(ByteOrder.LITTLE_ENDIAN).getFloat();
            assertTrue(a.bytes().length == 4 && Math.abs(na - nb) <= Math.ulp(oa) + Math.ulp(na),
                    name + ": " + na + " and " + nb + " differ by more than the offset's ulp");
        } else {
            throw new AssertionError(name + " differs: only the offset and the nested absmax it moves may");
        }
    }

    static Stream<String> f32DoubleQuantized() throws IOException {
        return quantizedModels().filter(m -> m.endsWith("-dq-f32"));
    }

    private Path quantize(String model) {
        Path out = dir.resolve("quantized");
        List<String> args = new ArrayList<>(List.of("quantize", "--base", baseOf(model).toString(), "--out", out.toString(), "--quant-type",
                kind(model), "--blocksize", "64", "--quiet"));
        if (model.contains("-dq-")) {
            args.add("--double-quant");
        }
        CliRun.Result r = CliRun.run(args.toArray(new String[0]));
        assertEquals(0, r.code(), r.err());
        return out;
    }

    /** One stored tensor: dtype, shape and bytes. */
    record Tensor(DType dtype, long[] shape, byte[] bytes) {
        String describe() {
            return dtype + Arrays.toString(shape);
        }

        String text() {
            return new String(bytes, StandardCharsets.UTF_8);
        }
    }

    /** Every tensor of a model folder (or of a folder holding one model.safetensors), by name. */
    static Map<String, Tensor> tensors(Path folder) throws Exception {
        Map<String, Tensor> out = new TreeMap<>();
        try (Checkpoint c = Checkpoint.open(folder)) {
            for (TensorInfo t : c.tensors().values()) {
                ByteBuffer b = c.fileOf(t.name()).readAll(t);
                byte[] bytes = new byte[b.remaining()];
                b.get(bytes);
                out.put(t.name(), new Tensor(t.dtype(), t.shape(), bytes));
            }
        }
        return out;
    }

    static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
