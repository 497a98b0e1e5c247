package org.loramerge.quant;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.quant.QuantException.Reason.*;

/** Finding NF4 groups in a checkpoint and refusing broken or unsupported ones; config.json's quantization_config. */
class Nf4DetectorTest {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String DQ = "dq_bs64_f32_40_blocks";
    private static final String PLAIN = "bs64_bf16_basic";

    @TempDir
    Path tmp;

    @Test
    void findsEveryGroupOfTheVectors() throws Exception {
        try (Checkpoint c = Checkpoint.open(Nf4Vectors.dir())) {
            Nf4Detector.Result r = Nf4Detector.detect(c);
            List<Nf4Vectors.Case> cases = Nf4Vectors.cases();
            assertEquals(cases.size(), r.weights().size());
            for (Nf4Vectors.Case k : cases) {
                Nf4Tensor t = r.weight(k.name() + ".weight");
                assertEquals(k.doubleQuant(), t.isDoubleQuant(), k.name());
                assertEquals(k.numElements(), t.numElements());
                assertTrue(r.groupTensorNames().containsAll(t.tensorNames()));
                assertEquals(k.doubleQuant() ? 6 : 4, t.tensorNames().size());
            }
            assertFalse(r.groupTensorNames().contains(PLAIN + ".input"));
            assertNull(r.config());
            assertTrue(r.warnings().stream().anyMatch(w -> w.contains("no quantization_config")), r.warnings().toString());
        }
    }

    /** A model folder holding the groups of one vectors case, changed by {@code edit}. */
    private Path model(String caseName, UnaryOperator<List<QuantModels.Tensor>> edit, String config) throws Exception {
        List<QuantModels.Tensor> group = new ArrayList<>();
        try (SafetensorsFile f = Nf4Vectors.open()) {
            for (QuantModels.Tensor t : QuantModels.read(f)) {
                if (t.name().startsWith(caseName + ".weight")) {
                    group.add(new QuantModels.Tensor(t.name().replace(caseName, "model.layers.0.mlp.up_proj"), t.dtype(), t.shape(), t.data()));
                }
            }
        }
        group.add(new QuantModels.Tensor("model.norm.weight", DType.BF16, new long[] {2}, new byte[4]));
        return QuantModels.write(tmp.resolve("m" + System.nanoTime()), edit.apply(group), config);
    }

    private static List<QuantModels.Tensor> without(List<QuantModels.Tensor> ts, String suffix) {
        ts.removeIf(t -> t.name().endsWith(suffix));
        return ts;
    }

    private static List<QuantModels.Tensor> replace(List<QuantModels.Tensor> ts, String suffix, UnaryOperator<QuantModels.Tensor> f) {
        ts.replaceAll(t -> t.name().endsWith(suffix) ? f.apply(t) : t);
        return ts;
    }

    private QuantException.Reason reject(Path dir) throws Exception {
        try (Checkpoint c = Checkpoint.open(dir)) {
            QuantException e = assertThrows(QuantException.class, () -> Nf4Detector.detect(c));
            assertTrue(e.getMessage().contains("model.layers.") && e.getMessage().contains(dir.toString()), e.getMessage());
            return e.reason();
        }
    }

    @Test
    void aValidGroupIsFoundWithItsConfig() throws Exception {
        Path dir = model(DQ, ts -> ts, "{\"model_type\": \"llama\", \"quantization_config\": " + Bnb4BitConfig.toJson(true, DType.BF16) + "}");
        try (Checkpoint c = Checkpoint.open(dir)) {
            Nf4Detector.Result r = Nf4Detector.detect(c);
            assertTrue(r.isQuantized());
            assertEquals(new Bnb4BitConfig(true, DType.BF16), r.config());
            assertEquals(List.of("model.layers.0.mlp.up_proj.weight"), new ArrayList<>(r.weights().keySet()));
            assertTrue(r.warnings().isEmpty(), r.warnings().toString());
        }
    }

    @Test
    void missingGroupMembers() throws Exception {
        assertEquals(MISSING_TENSOR, reject(model(DQ, ts -> without(ts, ".weight.absmax"), null)));
        assertEquals(MISSING_TENSOR, reject(model(DQ, ts -> without(ts, ".nested_absmax"), null)));
        assertEquals(MISSING_TENSOR, reject(model(DQ, ts -> without(ts, ".nested_quant_map"), null)));
        assertEquals(MISSING_TENSOR, reject(model(PLAIN, ts -> without(ts, ".quant_map"), null)));
        assertEquals(MISSING_TENSOR, reject(model(PLAIN, ts -> {
            ts.removeIf(t -> t.name().equals("model.layers.0.mlp.up_proj.weight"));
            return ts;
        }, null)));
        // group members without their quant state
        assertEquals(MISSING_TENSOR, reject(model(PLAIN, ts -> without(ts, QuantState.TENSOR_SUFFIX), null)));
    }

    @Test
    void groupMembersThatDoNotFitTheQuantState() throws Exception {
        // P.weight flattened to 1-D, or packed into bf16 words (bnb_4bit_quant_storage)
        assertEquals(TENSOR_MISMATCH, reject(model(PLAIN, ts -> replace(ts, "up_proj.weight",
                t -> new QuantModels.Tensor(t.name(), t.dtype(), new long[] {t.shape()[0]}, t.data())), null)));
        assertEquals(TENSOR_MISMATCH, reject(model(PLAIN, ts -> replace(ts, "up_proj.weight",
                t -> new QuantModels.Tensor(t.name(), DType.BF16, new long[] {t.shape()[0] / 2, 1}, t.data())), null)));
        // a double-quantized state with fp32 absmax
        assertEquals(TENSOR_MISMATCH, reject(model(DQ, ts -> replace(ts, ".weight.absmax",
                t -> new QuantModels.Tensor(t.name(), DType.F32, new long[] {t.shape()[0] / 4}, t.data())), null)));
        // one absmax too few
        assertEquals(TENSOR_MISMATCH, reject(model(PLAIN, ts -> replace(ts, ".weight.absmax",
                t -> new QuantModels.Tensor(t.name(), DType.F32, new long[] {t.shape()[0] - 1}, java.util.Arrays.copyOf(t.data(), t.data().length - 4))), null)));
        // nested tensors beside a plain state
        assertEquals(TENSOR_MISMATCH, reject(model(PLAIN, ts -> {
            ts.add(new QuantModels.Tensor("model.layers.0.mlp.up_proj.weight.nested_absmax", DType.F32, new long[] {1}, new byte[4]));
            return ts;
        }, null)));
        // the quant state as a 2-D tensor
        assertEquals(TENSOR_MISMATCH, reject(model(PLAIN, ts -> replace(ts, QuantState.TENSOR_SUFFIX,
                t -> new QuantModels.Tensor(t.name(), DType.U8, new long[] {1, t.shape()[0]}, t.data())), null)));
    }

    @Test
    void aBrokenQuantStateNamesItsFile() throws Exception {
        Path dir = model(PLAIN, ts -> replace(ts, QuantState.TENSOR_SUFFIX,
                t -> new QuantModels.Tensor(t.name(), DType.U8, new long[] {3}, QuantModels.utf8("{x}"))), null);
        try (Checkpoint c = Checkpoint.open(dir)) {
            QuantException e = assertThrows(QuantException.class, () -> Nf4Detector.detect(c));
            assertEquals(QUANT_STATE_NOT_JSON, e.reason());
            assertEquals(dir.resolve("model.safetensors"), e.path());
            assertEquals("model.layers.0.mlp.up_proj.weight" + QuantState.TENSOR_SUFFIX, e.tensor());
        }
    }

    @Test
    void aQuantStateOfAnotherTypeThanItsNameAndStrayEightBitScalesAreRefused() throws Exception {
        assertEquals(UNSUPPORTED_QUANT_TYPE, reject(model(PLAIN, ts -> replace(ts, QuantState.TENSOR_SUFFIX,
                t -> new QuantModels.Tensor(t.name().replace("nf4", "fp4"), t.dtype(), t.shape(), t.data())), null)));
        assertEquals(UNSUPPORTED_CONFIG, reject(model(PLAIN, ts -> {
            ts.add(new QuantModels.Tensor("model.layers.1.mlp.up_proj.SCB", DType.F32, new long[] {1}, new byte[4]));
            return ts;
        }, null)));
    }

    @Test
    void aQuantMapOtherThanNf4IsIgnoredWithAWarning() throws Exception {
        Path dir = model(PLAIN, ts -> replace(ts, ".quant_map", t -> {
            byte[] d = t.data().clone();
            d[0] ^= 1;
            return new QuantModels.Tensor(t.name(), t.dtype(), t.shape(), d);
        }), null);
        try (Checkpoint c = Checkpoint.open(dir)) {
            Nf4Detector.Result r = Nf4Detector.detect(c);
            assertTrue(r.warnings().stream().anyMatch(w -> w.contains("differs from the NF4 table")), r.warnings().toString());
        }
    }

    // ------------------------------------------------------------------ config.json

    private static QuantException.Reason rejectConfig(String quantizationConfig) {
        QuantException e = assertThrows(QuantException.class, () -> parseConfig(quantizationConfig));
        return e.reason();
    }

    private static Bnb4BitConfig parseConfig(String quantizationConfig) throws Exception {
        ObjectNode c = (ObjectNode) JSON.readTree("{\"model_type\": \"llama\", \"quantization_config\": " + quantizationConfig + "}");
        return Bnb4BitConfig.parse(c, Path.of("config.json"));
    }

    @Test
    void configAsTransformersWritesIt() throws Exception {
        // transformers 5.18 BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        // bnb_4bit_compute_dtype=torch.bfloat16).to_dict(), as save_pretrained writes it (sorted keys)
        String written = "{\"_load_in_4bit\": true, \"_load_in_8bit\": false, \"bnb_4bit_compute_dtype\": \"bfloat16\", "
                + "\"bnb_4bit_quant_storage\": \"uint8\", \"bnb_4bit_quant_type\": \"nf4\", \"bnb_4bit_use_double_quant\": true, "
                + "\"llm_int8_enable_fp32_cpu_offload\": false, \"llm_int8_has_fp16_weight\": false, \"llm_int8_skip_modules\": null, "
                + "\"llm_int8_threshold\": 6.0, \"load_in_4bit\": true, \"load_in_8bit\": false, \"quant_method\": \"bitsandbytes\"}";
        assertEquals(JSON.readTree(written), Bnb4BitConfig.toJson(true, DType.BF16));
        List<String> keys = new ArrayList<>();
        for (Iterator<String> it = Bnb4BitConfig.toJson(false, DType.F16).fieldNames(); it.hasNext(); ) {
            keys.add(it.next());
        }
        List<String> sorted = new ArrayList<>(keys);
        java.util.Collections.sort(sorted);
        assertEquals(sorted, keys);
        assertEquals(new Bnb4BitConfig(true, DType.BF16), parseConfig(written));
        // older transformers wrote no private keys and could omit the defaults
        assertEquals(new Bnb4BitConfig(false, DType.F32),
                parseConfig("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\"}"));
        assertNull(Bnb4BitConfig.parse((ObjectNode) JSON.readTree("{\"model_type\": \"llama\"}"), Path.of("config.json")));
        // transformers' default quant type is fp4, which loramerge reads too
        assertEquals(new Bnb4BitConfig(false, DType.F32, FourBitCode.FP4),
                parseConfig("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}"));
    }

    @Test
    void unsupportedConfigs() {
        String base = "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": \"nf4\"";
        assertEquals(UNSUPPORTED_CONFIG, rejectConfig(base.replace("nf4", "int4") + "}"));
        assertEquals(UNSUPPORTED_CONFIG, rejectConfig(base + ", \"bnb_4bit_quant_storage\": \"bfloat16\"}"));
        assertEquals(UNSUPPORTED_CONFIG, rejectConfig(base + ", \"bnb_4bit_compute_dtype\": \"float64\"}"));
        assertEquals(UNSUPPORTED_CONFIG, rejectConfig("{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true}"));
        assertEquals(UNSUPPORTED_CONFIG, rejectConfig("{\"quant_method\": \"gptq\", \"bits\": 4}"));
    }

    @Test
    void invalidConfigs() {
        assertEquals(INVALID_CONFIG, rejectConfig("[]"));
        assertEquals(INVALID_CONFIG, rejectConfig("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": \"yes\"}"));
        assertEquals(INVALID_CONFIG, rejectConfig("{\"quant_method\": \"bitsandbytes\"}"));
        assertEquals(INVALID_CONFIG, rejectConfig("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"bnb_4bit_quant_type\": 4}"));
    }
}
