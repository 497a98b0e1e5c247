package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.TensorInfo;

import static org.loramerge.quant.QuantException.Reason.INVALID_CONFIG;
import static org.loramerge.quant.QuantException.Reason.MISSING_TENSOR;
import static org.loramerge.quant.QuantException.Reason.TENSOR_MISMATCH;
import static org.loramerge.quant.QuantException.Reason.UNSUPPORTED_CONFIG;

/**
 * FP8 weights (docs/FORMATS.md §12), in the two layouts transformers loads:
 *
 * <ul>
 * <li><b>transformers' fine-grained FP8</b> ({@code quantization_config.quant_method == "fp8"},
 *     FineGrainedFP8Config; DeepSeek-V3 and Qwen3 FP8 checkpoints): {@code P.weight} e4m3
 *     {@code [out, in]} and {@code P.weight_scale_inv} F32 (or e8m0 with {@code scale_fmt: "ue8m0"}),
 *     one per {@code weight_block_size} block ({@code [ceil(out/bm), ceil(in/bn)]}), or a scalar
 *     when {@code weight_block_size} is null; {@code P.activation_scale} with static activations.</li>
 * <li><b>compressed-tensors' float-quantized</b> ({@code quant_method == "compressed-tensors"},
 *     {@code format} "float-quantized" or "naive-quantized", weights {@code type: "float"},
 *     {@code num_bits: 8}): {@code P.weight} e4m3 and {@code P.weight_scale} (F32, BF16 or F16)
 *     per tensor {@code [1]}, per channel {@code [out, 1]}, per group {@code [out, in/g]} or per block;
 *     {@code P.input_scale} with static input activations.</li>
 * </ul>
 *
 * Every 2-D F8 {@code P.weight} with such a scale is a weight of the format; activation scales are
 * members of its group (a dense output drops them). Refused with the reason: asymmetric weights (a
 * zero point), act-order, FP8 tensors other than 2-D, a scale whose shape fits no scheme, a
 * compressed-tensors format that is not float (pack-quantized integers: another format).
 */
public final class Fp8Format implements WeightFormat {
    public static final Fp8Format INSTANCE = new Fp8Format();
    static final String KEY = "quantization_config";
    private static final List<String> ACTIVATION_SUFFIXES = List.of(".input_scale", ".activation_scale", ".input_zero_point",
            ".output_scale");

    private Fp8Format() {
    }

    @Override
    public String name() {
        return "FP8";
    }

    /** The config's layout: transformers or compressed-tensors, with the block or group size it names. */
    private record Config(String layout, String scaleSuffix, int blockRows, int blockCols, int groupSize) {
    }

    @Override
    public QuantizedModel detect(Checkpoint c) throws QuantException, IOException {
        Path configPath = c.dir().resolve("config.json");
        JsonNode q = c.config() == null ? null : c.config().get(KEY);
        String method = q != null && q.isObject() ? q.path("quant_method").asText(null) : null;
        boolean fp8Tensors = c.tensors().values().stream().anyMatch(t -> (t.dtype() == DType.F8_E4M3 || t.dtype() == DType.F8_E5M2)
                && t.name().endsWith(".weight") && (c.tensor(stem(t.name()) + ".weight_scale_inv") != null
                || c.tensor(stem(t.name()) + ".weight_scale") != null));
        Config config;
        if ("fp8".equals(method)) {
            config = transformersConfig(q, configPath);
        } else if ("compressed-tensors".equals(method)) {
            config = compressedTensorsConfig(q, configPath);
        } else if (method == null && fp8Tensors) {
            config = null;
        } else {
            return QuantizedModel.none();
        }
        List<String> warnings = new ArrayList<>();
        if (config == null) {
            warnings.add("FP8 weights but config.json has no quantization_config; each is read by its scale's name and shape, "
                    + "and transformers will not load them as FP8 without it");
        }
        DType modelDtype = modelDtype(c.config());
        Map<String, QuantizedWeight> weights = new LinkedHashMap<>();
        Set<String> members = new LinkedHashSet<>();
        for (TensorInfo t : c.tensors().values()) {
            if (t.dtype() != DType.F8_E4M3 && t.dtype() != DType.F8_E5M2) {
                continue;
            }
            String name = t.name();
            if (!name.endsWith(".weight")) {
                continue; // FP8 activation or kv-cache scales are not weights
            }
            Fp8Weight w = open(c, t, config, modelDtype);
            weights.put(name, w);
            members.addAll(w.tensorNames());
        }
        if (config != null && weights.isEmpty()) {
            warnings.add("config.json has an FP8 quantization_config but no tensor is FP8; it describes nothing here");
        }
        return new QuantizedModel(this, KEY, Collections.unmodifiableMap(weights), Collections.unmodifiableSet(members),
                Collections.unmodifiableList(warnings));
    }

    private static String stem(String weightName) {
        return weightName.substring(0, weightName.length() - ".weight".length());
    }

    /** The model's dtype (config.json {@code dtype} or {@code torch_dtype}): what transformers dequantizes FP8 weights to. */
    static DType modelDtype(ObjectNode config) {
        if (config != null) {
            for (String key : new String[] {"dtype", "torch_dtype"}) {
                if (config.hasNonNull(key)) {
                    DType d = DType.parseUserName(config.get(key).asText());
                    if (d != null && d.isMergeable()) {
                        return d;
                    }
                }
            }
        }
        return DType.BF16; // transformers' Fp8Dequantize without a model dtype: bfloat16
    }

    private static Config transformersConfig(JsonNode q, Path path) throws QuantException {
        JsonNode block = q.get("weight_block_size");
        String fmt = q.path("scale_fmt").asText("float");
        if (!fmt.equals("float") && !fmt.equals("ue8m0")) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".scale_fmt is \"" + fmt
                    + "\"; loramerge reads float and ue8m0 scales: merge into the original 16-bit model instead");
        }
        if (block == null || block.isNull()) {
            return new Config("transformers fine-grained FP8", ".weight_scale_inv", 0, 0, 0);
        }
        if (!block.isArray() || block.size() != 2 || !block.get(0).canConvertToInt() || !block.get(1).canConvertToInt()
                || block.get(0).asInt() <= 0 || block.get(1).asInt() <= 0) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + ".weight_block_size is " + block
                    + ", not two positive integers; fix config.json");
        }
        return new Config("transformers fine-grained FP8", ".weight_scale_inv", block.get(0).asInt(), block.get(1).asInt(), 0);
    }

    private static Config compressedTensorsConfig(JsonNode q, Path path) throws QuantException {
        String format = q.path("format").asText("");
        JsonNode groups = q.get("config_groups");
        if (groups == null || !groups.isObject() || groups.size() == 0) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + " (compressed-tensors) has no config_groups; fix config.json");
        }
        int blockRows = 0;
        int blockCols = 0;
        int group = 0;
        for (var it = groups.fields(); it.hasNext(); ) {
            var e = it.next();
            JsonNode w = e.getValue().get("weights");
            if (w == null || w.isNull()) {
                continue;
            }
            String type = w.path("type").asText("int");
            int bits = w.path("num_bits").asInt(-1);
            if (!type.equals("float") || bits != 8) {
                throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".config_groups." + e.getKey() + " quantizes weights to " + bits
                        + "-bit " + type + " (compressed-tensors format \"" + format + "\"); loramerge reads compressed-tensors' 8-bit "
                        + "float weights (FP8) only: merge into the original 16-bit model instead");
            }
            if (!w.path("symmetric").asBoolean(true)) {
                throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".config_groups." + e.getKey()
                        + " has asymmetric FP8 weights (a zero point), which no FP8 runtime uses; merge into the original 16-bit model instead");
            }
            if (w.hasNonNull("actorder") && !w.get("actorder").asText().equals("false")) {
                throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".config_groups." + e.getKey() + " has actorder "
                        + w.get("actorder") + " with FP8 weights; loramerge does not read that: merge into the original 16-bit model instead");
            }
            JsonNode bs = w.get("block_structure");
            if (bs != null && bs.isArray() && bs.size() == 2) {
                blockRows = bs.get(0).asInt();
                blockCols = bs.get(1).asInt();
            }
            if (w.hasNonNull("group_size")) {
                group = w.get("group_size").asInt();
            }
        }
        if (!format.equals("float-quantized") && !format.equals("naive-quantized")) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".format is \"" + format
                    + "\"; loramerge reads compressed-tensors' float-quantized FP8 weights: merge into the original 16-bit model instead");
        }
        return new Config("compressed-tensors float-quantized", ".weight_scale", blockRows, blockCols, group);
    }

    private static Fp8Weight open(Checkpoint c, TensorInfo t, Config config, DType modelDtype) throws QuantException, IOException {
        String name = t.name();
        String stem = stem(name);
        Path file = c.fileOf(name).path();
        if (t.rank() != 2) {
            throw new QuantException(TENSOR_MISMATCH, file, name, "is an FP8 tensor of shape " + TensorInfo.shapeString(t.shape())
                    + "; loramerge reads 2-D FP8 weights ([out, in]) only: merge into the original 16-bit model instead");
        }
        for (String refused : new String[] {".weight_zero_point", ".weight_g_idx"}) {
            if (c.tensor(stem + refused) != null) {
                throw new QuantException(UNSUPPORTED_CONFIG, c.fileOf(stem + refused).path(), stem + refused,
                        "belongs to an FP8 weight quantized asymmetrically or with act-order, which loramerge does not read: "
                                + "merge into the original 16-bit model instead");
            }
        }
        String scaleSuffix = config != null ? config.scaleSuffix() : c.tensor(stem + ".weight_scale_inv") != null ? ".weight_scale_inv" : ".weight_scale";
        String layout = config != null ? config.layout()
                : scaleSuffix.equals(".weight_scale_inv") ? "transformers fine-grained FP8" : "compressed-tensors float-quantized";
        TensorInfo s = c.tensor(stem + scaleSuffix);
        if (s == null) {
            throw new QuantException(MISSING_TENSOR, c.dir(), stem + scaleSuffix, "is missing although '" + name
                    + "' is an FP8 weight that needs it (" + layout + "); the checkpoint is incomplete");
        }
        Path scalePath = c.fileOf(s.name()).path();
        if (s.dtype() != DType.F32 && s.dtype() != DType.BF16 && s.dtype() != DType.F16 && s.dtype() != DType.F8_E8M0) {
            throw new QuantException(TENSOR_MISMATCH, scalePath, s.name(), "is " + s.dtype() + "; an FP8 weight's scales are F32, BF16, "
                    + "F16 or E8M0; the file is corrupt or not an FP8 checkpoint");
        }
        long rows = t.dim(0);
        long cols = t.dim(1);
        long[] ss = s.shape();
        long n = s.numElements();
        Fp8Weight.Scheme scheme;
        int blockRows = 1;
        int blockCols = (int) Math.min(Integer.MAX_VALUE, cols);
        int br = config == null ? 0 : config.blockRows();
        int bc = config == null ? 0 : config.blockCols();
        if (ss.length == 2 && br > 0 && bc > 0 && ss[0] == ceil(rows, br) && ss[1] == ceil(cols, bc)) {
            scheme = Fp8Weight.Scheme.BLOCK; // the config's blocks, also when one block covers the weight
            blockRows = br;
            blockCols = bc;
        } else if (n == 1 && ss.length <= 2) {
            scheme = Fp8Weight.Scheme.TENSOR;
        } else if (ss.length == 2 && ss[0] == rows && ss[1] == 1) {
            scheme = Fp8Weight.Scheme.CHANNEL;
        } else if (ss.length == 2 && config != null && config.groupSize() > 0 && ss[0] == rows && ss[1] == ceil(cols, config.groupSize())) {
            scheme = Fp8Weight.Scheme.GROUP;
            blockCols = config.groupSize();
        } else if (ss.length == 2 && br == 0 && ss[0] > 0 && ss[1] > 0 && rows % ss[0] == 0 && cols % ss[1] == 0) {
            // no block size in the config: the grid divides the weight, as transformers' Fp8Dequantize derives it
            scheme = Fp8Weight.Scheme.BLOCK;
            blockRows = (int) (rows / ss[0]);
            blockCols = (int) (cols / ss[1]);
        } else {
            throw new QuantException(TENSOR_MISMATCH, scalePath, s.name(), "has shape " + TensorInfo.shapeString(ss) + ", which fits no scale "
                    + "layout of the " + TensorInfo.shapeString(t.shape()) + " weight '" + name + "' (one value, [out, 1], [out, in/group]"
                    + (br > 0 ? ", or [ceil(out/" + br + "), ceil(in/" + bc + ")]" : "") + "); the checkpoint is corrupt or its config.json "
                    + "names another block size");
        }
        float[] scales = readScales(c, s);
        for (int i = 0; i < scales.length; i++) {
            if (!Float.isFinite(scales[i])) {
                throw new QuantException(TENSOR_MISMATCH, scalePath, s.name(), "holds " + scales[i] + " at " + i
                        + "; an FP8 scale is finite: the file is corrupt");
            }
        }
        List<String> names = new ArrayList<>(List.of(name, s.name()));
        List<Fp8Weight.Part> extras = new ArrayList<>();
        for (String a : ACTIVATION_SUFFIXES) {
            TensorInfo x = c.tensor(stem + a);
            if (x != null) {
                names.add(x.name());
                extras.add(new Fp8Weight.Part(c.fileOf(x.name()), x));
            }
        }
        // transformers multiplies in fp32; compressed-tensors in the scale's dtype (an e8m0 scale only exists in transformers' layout)
        DType product = layout.startsWith("transformers") || s.dtype() == DType.F8_E8M0 ? DType.F32 : s.dtype();
        return new Fp8Weight(name, new Fp8Weight.Part(c.fileOf(name), t), new Fp8Weight.Part(c.fileOf(s.name()), s), scheme, blockRows,
                blockCols, product, modelDtype, layout, names, scales, extras);
    }

    private static long ceil(long a, long b) {
        return (a + b - 1) / b;
    }

    private static float[] readScales(Checkpoint c, TensorInfo s) throws IOException {
        ByteBuffer b = c.fileOf(s.name()).readAll(s);
        int n = Math.toIntExact(s.numElements());
        float[] out = new float[n];
        if (s.dtype() == DType.F8_E8M0) {
            for (int i = 0; i < n; i++) {
                out[i] = Fp8Codec.decodeE8M0(b.get(i));
            }
            return out;
        }
        FloatFormat f = FloatFormat.of(s.dtype());
        for (int i = 0; i < n; i++) {
            out[i] = (float) f.decode(f.bitsAt(b, i));
        }
        return out;
    }
}
