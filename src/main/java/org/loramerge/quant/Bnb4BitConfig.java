package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Path;
import org.loramerge.format.DType;

import static org.loramerge.quant.QuantException.Reason.INVALID_CONFIG;
import static org.loramerge.quant.QuantException.Reason.UNSUPPORTED_CONFIG;

/**
 * config.json's {@code quantization_config} for a bitsandbytes 4-bit model, as transformers writes
 * it: {@code BitsAndBytesConfig.to_dict()} (transformers utils/quantization_config.py), which
 * holds the private {@code _load_in_4bit}/{@code _load_in_8bit} beside the public flags, and dtype
 * names without the {@code torch.} prefix.
 *
 * @param doubleQuant  {@code bnb_4bit_use_double_quant}
 * @param computeDtype {@code bnb_4bit_compute_dtype} (F32, F16 or BF16; transformers' default is float32)
 * @param code         {@code bnb_4bit_quant_type} (transformers' default is fp4)
 */
public record Bnb4BitConfig(boolean doubleQuant, DType computeDtype, FourBitCode code) {
    /** An NF4 config. */
    public Bnb4BitConfig(boolean doubleQuant, DType computeDtype) {
        this(doubleQuant, computeDtype, FourBitCode.NF4);
    }

    public static final String KEY = "quantization_config";

    /**
     * Reads {@code config.quantization_config}; null when config (or the key) is absent. Refuses
     * what loramerge cannot dequantize exactly: another method, 8-bit, FP4, packed storage.
     */
    public static Bnb4BitConfig parse(ObjectNode config, Path configPath) throws QuantException {
        if (config == null || !config.has(KEY) || config.get(KEY).isNull()) {
            return null;
        }
        JsonNode q = config.get(KEY);
        if (!q.isObject()) {
            throw new QuantException(INVALID_CONFIG, configPath, null, KEY + " is " + q.getNodeType() + ", not an object; fix config.json");
        }
        String method = string(q, "quant_method", null, configPath);
        if (method == null || !method.equals("bitsandbytes")) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, KEY + ".quant_method is " + (method == null ? "missing" : "\"" + method + "\"")
                    + "; loramerge reads bitsandbytes NF4 checkpoints only: merge into the original 16-bit base instead");
        }
        boolean in8 = bool(q, "load_in_8bit", bool(q, "_load_in_8bit", false, configPath), configPath);
        boolean in4 = bool(q, "load_in_4bit", bool(q, "_load_in_4bit", false, configPath), configPath);
        if (in8) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, "the model is quantized to 8 bits (LLM.int8, load_in_8bit); "
                    + "loramerge handles 4-bit NF4 only: merge into the original 16-bit base instead");
        }
        if (!in4) {
            throw new QuantException(INVALID_CONFIG, configPath, null, KEY + " is bitsandbytes but neither load_in_4bit nor load_in_8bit is true; fix config.json");
        }
        // transformers' BitsAndBytesConfig default quant type is fp4
        String type = string(q, "bnb_4bit_quant_type", "fp4", configPath);
        if (FourBitCode.of(type) == null) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, "bnb_4bit_quant_type is \"" + type
                    + "\"; bitsandbytes' 4-bit types are nf4 and fp4: fix config.json");
        }
        boolean dq = bool(q, "bnb_4bit_use_double_quant", false, configPath);
        String compute = string(q, "bnb_4bit_compute_dtype", "float32", configPath);
        DType computeDtype = QuantState.parseTorchDtype(compute);
        if (computeDtype == null) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, "bnb_4bit_compute_dtype \"" + compute
                    + "\" is not bfloat16, float16 or float32");
        }
        String storage = string(q, "bnb_4bit_quant_storage", "uint8", configPath);
        if (!storage.equals("uint8")) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, "bnb_4bit_quant_storage is \"" + storage
                    + "\" (codes packed into " + storage + " words, as FSDP-QLoRA saves them); loramerge reads uint8 storage only: "
                    + "re-save the model with bnb_4bit_quant_storage=\"uint8\"");
        }
        return new Bnb4BitConfig(dq, computeDtype, FourBitCode.of(type));
    }

    private static String string(JsonNode q, String key, String fallback, Path path) throws QuantException {
        JsonNode n = q.get(key);
        if (n == null || n.isNull()) {
            return fallback;
        }
        if (!n.isTextual()) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + "." + key + " is " + n + ", not a string; fix config.json");
        }
        return n.textValue();
    }

    private static boolean bool(JsonNode q, String key, boolean fallback, Path path) throws QuantException {
        JsonNode n = q.get(key);
        if (n == null || n.isNull()) {
            return fallback;
        }
        if (!n.isBoolean()) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + "." + key + " is " + n + ", not true or false; fix config.json");
        }
        return n.booleanValue();
    }

    /**
     * The {@code quantization_config} transformers writes for
     * {@code BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=dq,
     * bnb_4bit_compute_dtype=compute)}: the same keys and values as its {@code to_dict()}, in the
     * order save_pretrained writes them ({@code json.dumps(sort_keys=True)}).
     */
    public static ObjectNode toJson(boolean doubleQuant, DType computeDtype) {
        return toJson(FourBitCode.NF4, doubleQuant, computeDtype);
    }

    /** {@link #toJson(boolean, DType)} for code book {@code code} ({@code bnb_4bit_quant_type}). */
    public static ObjectNode toJson(FourBitCode code, boolean doubleQuant, DType computeDtype) {
        ObjectNode q = JsonNodeFactory.instance.objectNode();
        q.put("_load_in_4bit", true);
        q.put("_load_in_8bit", false);
        q.put("bnb_4bit_compute_dtype", computeDtype.torchName());
        q.put("bnb_4bit_quant_storage", "uint8");
        q.put("bnb_4bit_quant_type", code.typeName());
        q.put("bnb_4bit_use_double_quant", doubleQuant);
        q.put("llm_int8_enable_fp32_cpu_offload", false);
        q.put("llm_int8_has_fp16_weight", false);
        q.putNull("llm_int8_skip_modules");
        q.put("llm_int8_threshold", 6.0);
        q.put("load_in_4bit", true);
        q.put("load_in_8bit", false);
        q.put("quant_method", "bitsandbytes");
        return q;
    }
}
