package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.DynamicMap;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Decoder;
import org.loramerge.quant.Nf4Detector;
import org.loramerge.quant.Nf4Encoder;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantState;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The golden QLoRA cases of src/test/resources/qlora (scripts/fixtures/make_qlora_fixtures.py): a tiny bf16
 * Llama quantized by scripts/fixtures/nf4_reference.py, a PEFT adapter made on its dequantized weights,
 * and what {@code merge --to bf16} and {@code merge --to nf4} must write, computed by
 * scripts/fixtures/nf4_reference.py with exact rational arithmetic. Every adapted tensor must be byte-equal
 * to the reference's, every other one byte-equal to the base (or, dequantized, to the decoder's
 * values), config.json must change as documented, and the survival figures of {@code --to nf4}
 * must be what dequantizing the written model gives, recomputed here from scratch.
 */
class QloraGoldenTest {
    static final Path QLORA = Paths.get("src/test/resources/qlora");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    static Stream<Arguments> runs() {
        return Stream.of("dq_bs64", "plain_bs32").flatMap(c -> Stream.of(Arguments.of(c, "bf16"), Arguments.of(c, "nf4")));
    }

    @ParameterizedTest(name = "{0} --to {1}")
    @MethodSource("runs")
    void mergeIsByteExactWithTheReference(String name, String to) throws Exception {
        Path caseDir = QLORA.resolve(name);
        Path base = caseDir.resolve("base");
        Path out = tmp.resolve("out");
        JsonNode report = JSON.readTree(run("merge", "--base", base.toString(), "--adapter", caseDir.resolve("adapter").toString(),
                "--out", out.toString(), "--to", to, "--json", "--quiet", "--threads", "2"));
        boolean nf4 = to.equals("nf4");
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint b = Checkpoint.open(base);
             SafetensorsFile expected = SafetensorsFile.open(caseDir.resolve("expected_" + to + ".safetensors"))) {
            Nf4Detector.Result quant = Nf4Detector.detect(b);
            Set<String> expectedNames = new TreeSet<>();
            // 1. the adapted tensors, byte for byte with the reference
            for (TensorInfo e : expected.tensors()) {
                expectedNames.add(e.name());
                TensorInfo o = ours.tensor(e.name());
                assertNotNull(o, e.name() + " missing");
                assertEquals(e.dtype(), o.dtype(), e.name());
                byte[] want = bytes(expected, e);
                byte[] got = bytes(ours.fileOf(o.name()), o);
                // the quant state too: bitsandbytes' exact json.dumps bytes, offset included, without padding
                assertArrayEquals(e.shape(), o.shape(), e.name());
                assertArrayEquals(want, got, e.name() + " differs from scripts/fixtures/nf4_reference.py");
            }
            // 2. everything else: the base's bytes, or (--to bf16) an unadapted 4-bit weight dequantized
            Set<String> wanted = new TreeSet<>(expectedNames);
            for (TensorInfo t : b.tensors().values()) {
                if (nf4 ? expectedGroupMember(expectedNames, t.name()) : quant.groupTensorNames().contains(t.name())
                        && quant.weight(t.name()) == null) {
                    continue; // replaced by the requantized group, or dropped with its dequantized weight
                }
                wanted.add(t.name());
                if (expectedNames.contains(t.name())) {
                    continue;
                }
                TensorInfo o = ours.tensor(t.name());
                assertNotNull(o, t.name() + " missing");
                Nf4Tensor q = quant.weight(t.name());
                if (!nf4 && q != null) {
                    assertEquals(q.dtype(), o.dtype());
                    assertArrayEquals(q.shape(), o.shape());
                    ByteBuffer deq = ByteBuffer.allocate((int) o.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                    q.decoder().dequantizeTo(0, (int) q.numElements(), deq);
                    assertArrayEquals(deq.array(), bytes(ours.fileOf(o.name()), o), t.name() + " is not its dequantized value");
                } else {
                    assertEquals(t.dtype(), o.dtype(), t.name());
                    assertArrayEquals(t.shape(), o.shape(), t.name());
                    assertArrayEquals(bytes(b.fileOf(t.name()), t), bytes(ours.fileOf(o.name()), o), t.name() + " must be copied unchanged");
                }
            }
            assertEquals(wanted, new TreeSet<>(ours.tensors().keySet()));
            // 3. config.json
            JsonNode baseConfig = JSON.readTree(Files.readAllBytes(base.resolve("config.json")));
            JsonNode config = JSON.readTree(Files.readAllBytes(out.resolve("config.json")));
            if (nf4) {
                assertEquals(baseConfig.get("quantization_config"), config.get("quantization_config"));
                assertEquals(baseConfig, config);
            } else {
                assertFalse(config.has("quantization_config"), "a dequantized model must not claim to be 4-bit");
                assertEquals("bfloat16", config.get("dtype").asText());
                com.fasterxml.jackson.databind.node.ObjectNode rest = baseConfig.deepCopy();
                rest.remove("quantization_config");
                assertEquals(rest, config);
            }
            if (nf4) {
                checkSurvival(caseDir, b, ours, report.get("requantization"));
            } else {
                assertTrue(report.get("requantization").isNull());
                assertEquals(quant.weights().size() - countWeights(expectedNames, quant), report.get("tensors_dequantized").asLong());
            }
        }
    }

    /** A tensor of a requantized group other than P.weight (written as part of the group). */
    private static boolean expectedGroupMember(Set<String> expectedNames, String name) {
        for (String suffix : List.of(".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", QuantState.TENSOR_SUFFIX)) {
            if (name.endsWith(".weight" + suffix)) {
                return expectedNames.contains(name.substring(0, name.length() - suffix.length()));
            }
        }
        return false;
    }

    private static long countWeights(Set<String> names, Nf4Detector.Result quant) {
        return names.stream().filter(n -> quant.weight(n) != null).count();
    }

    /**
     * Recomputes the survival report from the written model: deq(Q(X)) read back from the output,
     * Q(W) quantized here from the dequantized base with the sequential encoder, ΔW = s·B·A in
     * double from the adapter's factors. Agreement with the report (and with the reference's
     * figures in case.json) to 1e-9 allows for summation order only.
     */
    private static void checkSurvival(Path caseDir, Checkpoint base, Checkpoint ours, JsonNode requant) throws Exception {
        JsonNode adapterConfig = JSON.readTree(Files.readAllBytes(caseDir.resolve("adapter/adapter_config.json")));
        double scale = adapterConfig.get("lora_alpha").asDouble() / adapterConfig.get("r").asDouble();
        JsonNode reference = JSON.readTree(Files.readAllBytes(caseDir.resolve("case.json"))).get("survival");
        double totalDelta = 0;
        double totalSurviving = 0;
        double totalDot = 0;
        long totalChanged = 0;
        Set<String> seen = new HashSet<>();
        try (SafetensorsFile adapter = SafetensorsFile.open(caseDir.resolve("adapter/adapter_model.safetensors"))) {
            for (JsonNode t : requant.get("tensors")) {
                String name = t.get("name").asText();
                seen.add(name);
                Nf4Tensor baseGroup = Nf4Tensor.open(base, name);
                Nf4Tensor ourGroup = Nf4Tensor.open(ours, name);
                int n = (int) baseGroup.numElements();
                int bs = baseGroup.blocksize();
                int cols = (int) baseGroup.shape()[1];
                FloatFormat fmt = FloatFormat.of(baseGroup.dtype());
                // W and Q(W), quantized block by block in order (the sequential encoder)
                double[] w = new double[n];
                baseGroup.decoder().dequantizeRounded(0, n, w, 0);
                ByteArrayOutputStream packedW = new ByteArrayOutputStream();
                Nf4Encoder enc = new Nf4Encoder(n, bs, p -> packedW.write(p.array(), p.arrayOffset() + p.position(), p.remaining()), null, name);
                float[] wf = new float[n];
                for (int i = 0; i < n; i++) {
                    wf[i] = (float) w[i];
                }
                enc.accept(wf, 0, n);
                float[] scaleW = enc.finish();
                if (baseGroup.isDoubleQuant()) {
                    DoubleQuant.Result dq = DoubleQuant.quantize(scaleW, scaleW.length);
                    float[] map = DynamicMap.signed();
                    for (int b = 0; b < scaleW.length; b++) {
                        scaleW[b] = DoubleQuant.decode(dq.codes()[b], dq.nestedAbsmax()[b / DoubleQuant.NESTED_BLOCKSIZE], dq.offset(), map);
                    }
                }
                byte[] codesW = packedW.toByteArray();
                // deq(Q(X)) and its codes and scales, from the written model
                Nf4Decoder ourDecoder = ourGroup.decoder();
                double[] x = new double[n];
                ourDecoder.dequantizeRounded(0, n, x, 0);
                float[] scaleX = ourDecoder.absmax(0, (int) ourGroup.state().numBlocks());
                byte[] codesX = bytes(ours.fileOf(name), ours.tensor(name));
                // ΔW = s·B·A
                String module = name.substring(0, name.length() - ".weight".length());
                float[] a = floats(adapter, "base_model.model." + module + ".lora_A.weight");
                float[] bFactor = floats(adapter, "base_model.model." + module + ".lora_B.weight");
                int r = a.length / cols;
                double delta2 = 0;
                double surviving2 = 0;
                double dot = 0;
                long changed = 0;
                for (int i = 0; i < n; i++) {
                    int row = i / cols;
                    int col = i % cols;
                    double d = 0;
                    for (int k = 0; k < r; k++) {
                        d += (double) bFactor[row * r + k] * a[k * cols + col];
                    }
                    d *= scale;
                    int cx = Nf4Codec.codeAt(codesX[i / 2], i);
                    int cw = Nf4Codec.codeAt(codesW[i / 2], i);
                    double deqW = fmt.round(Nf4Codec.dequantize(cw, scaleW[i / bs]));
                    double diff = x[i] - deqW;
                    double rawDiff = (double) Nf4Codec.value(cx) * scaleX[i / bs] - (double) Nf4Codec.value(cw) * scaleW[i / bs];
                    delta2 += d * d;
                    surviving2 += diff * diff;
                    dot += rawDiff * d;
                    changed += cx != cw ? 1 : 0;
                }
                assertEquals(changed, t.get("codes_changed").asLong(), name);
                assertEquals(n, t.get("codes").asLong(), name);
                assertClose(Math.sqrt(surviving2 / delta2), t.get("survival").asDouble(), name + " survival");
                assertClose(dot / delta2, t.get("aligned").asDouble(), name + " aligned");
                JsonNode ref = referenceTensor(reference, name);
                assertEquals(ref.get("codes_changed").asLong(), changed, name);
                assertClose(ref.get("survival").asDouble(), t.get("survival").asDouble(), name + " survival vs reference");
                assertClose(ref.get("aligned").asDouble(), t.get("aligned").asDouble(), name + " aligned vs reference");
                totalDelta += delta2;
                totalSurviving += surviving2;
                totalDot += dot;
                totalChanged += changed;
            }
        }
        assertEquals(reference.get("tensors").size(), seen.size(), "every requantized weight is reported");
        assertEquals(totalChanged, requant.get("codes_changed").asLong());
        assertClose(Math.sqrt(totalSurviving / totalDelta), requant.get("survival").asDouble(), "total survival");
        assertClose(totalDot / totalDelta, requant.get("aligned").asDouble(), "total aligned");
        assertClose(reference.get("survival").asDouble(), requant.get("survival").asDouble(), "total survival vs reference");
        assertClose(reference.get("aligned").asDouble(), requant.get("aligned").asDouble(), "total aligned vs reference");
    }

    private static JsonNode referenceTensor(JsonNode reference, String name) {
        for (JsonNode t : reference.get("tensors")) {
            if (t.get("name").asText().equals(name)) {
                return t;
            }
        }
        throw new AssertionError(name + " not in case.json");
    }

    private static void assertClose(double want, double got, String what) {
        assertTrue(Math.abs(want - got) <= 1e-9 * Math.abs(want), what + ": " + got + " vs " + want);
    }

    private static float[] floats(SafetensorsFile f, String name) throws IOException {
        ByteBuffer b = f.readAll(f.tensor(name));
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    static byte[] bytes(SafetensorsFile f, TensorInfo t) throws IOException {
        ByteBuffer b = f.readAll(t);
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    /** Runs the command line, which must succeed; returns its stdout. */
    static String run(String... args) {
        PrintStream out = System.out;
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        System.setOut(new PrintStream(buf, true, StandardCharsets.UTF_8));
        try {
            assertEquals(0, Main.run(args), String.join(" ", args));
        } finally {
            System.setOut(out);
        }
        return buf.toString(StandardCharsets.UTF_8);
    }
}
