package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
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
 * GPTQ and AWQ weights ({@link PackedIntWeight}, docs/FORMATS.md §13), found from
 * {@code quantization_config} ({@code quant_method} "gptq" or "awq", transformers' GPTQConfig and
 * AwqConfig) and the {@code P.qweight}, {@code P.qzeros}, {@code P.scales} [, {@code P.g_idx}]
 * tensors of each quantized Linear. Read: GPTQ 2, 4 and 8 bits in checkpoint formats "gptq" and
 * "gptq_v2", any group size (or one group), act-order ({@code desc_act}, {@code g_idx}), symmetric or
 * not; AWQ 4 bits in its GEMM layout with zero points. Refused with the reason: 3-bit GPTQ, the
 * marlin/bitblas/exllama repackings, AWQ's GEMV/marlin layouts and AWQ without zero points, and any
 * group whose tensors do not fit its config.
 */
public final class PackedIntFormat implements WeightFormat {
    public static final PackedIntFormat INSTANCE = new PackedIntFormat();
    static final String KEY = "quantization_config";

    private PackedIntFormat() {
    }

    @Override
    public String name() {
        return "GPTQ/AWQ";
    }

    private record Config(String method, PackedIntWeight.Packing packing, int bits, int groupSize, boolean descAct) {
        String display() {
            return method.toUpperCase(Locale.ROOT);
        }
    }

    @Override
    public QuantizedModel detect(Checkpoint c) throws QuantException, IOException {
        JsonNode q = c.config() == null ? null : c.config().get(KEY);
        String method = q != null && q.isObject() ? q.path("quant_method").asText("") : "";
        if (!method.equals("gptq") && !method.equals("awq")) {
            return QuantizedModel.none();
        }
        Path configPath = c.dir().resolve("config.json");
        Config config = method.equals("gptq") ? gptq(q, configPath) : awq(q, configPath);
        Map<String, QuantizedWeight> weights = new LinkedHashMap<>();
        Set<String> members = new LinkedHashSet<>();
        List<String> warnings = new ArrayList<>();
        for (TensorInfo t : c.tensors().values()) {
            if (!t.name().endsWith(".qweight")) {
                continue;
            }
            String stem = t.name().substring(0, t.name().length() - ".qweight".length());
            PackedIntWeight w = open(c, stem, config);
            weights.put(w.weightName(), w);
            members.addAll(w.tensorNames());
        }
        for (TensorInfo t : c.tensors().values()) {
            for (String s : new String[] {".qzeros", ".scales", ".g_idx"}) {
                if (t.name().endsWith(s) && !members.contains(t.name())) {
                    String stem = t.name().substring(0, t.name().length() - s.length());
                    throw new QuantException(MISSING_TENSOR, c.fileOf(t.name()).path(), stem + ".qweight", "is missing but '" + t.name()
                            + "' is present; a " + config.display() + " weight needs both (the checkpoint is incomplete)");
                }
            }
        }
        if (weights.isEmpty()) {
            warnings.add("config.json has a " + config.display() + " quantization_config but no tensor is packed (no .qweight); it describes nothing here");
        }
        return new QuantizedModel(this, KEY, Collections.unmodifiableMap(weights), Collections.unmodifiableSet(members),
                Collections.unmodifiableList(warnings));
    }

    private static int intField(JsonNode q, String key, int fallback, Path path) throws QuantException {
        JsonNode n = q.get(key);
        if (n == null || n.isNull()) {
            return fallback;
        }
        if (!n.canConvertToInt() || !n.isIntegralNumber()) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + "." + key + " is " + n + ", not an integer; fix config.json");
        }
        return n.intValue();
    }

    private static Config gptq(JsonNode q, Path path) throws QuantException {
        int bits = intField(q, "bits", -1, path);
        if (bits != 2 && bits != 4 && bits != 8) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".bits is " + bits + "; loramerge reads 2-, 4- and 8-bit GPTQ "
                    + "(3-bit packs values across words): merge into the original 16-bit model instead");
        }
        int group = intField(q, "group_size", 128, path);
        if (group == 0 || group < -1) {
            throw new QuantException(INVALID_CONFIG, path, null, KEY + ".group_size is " + group + "; GPTQ uses a positive size or -1; fix config.json");
        }
        // transformers' GPTQConfig writes checkpoint_format; GPTQModel writes format (and meta); neither means v1
        String format = q.hasNonNull("checkpoint_format") ? q.get("checkpoint_format").asText() : q.path("format").asText("gptq");
        PackedIntWeight.Packing packing;
        switch (format.toLowerCase(Locale.ROOT)) {
            case "gptq":
                packing = PackedIntWeight.Packing.GPTQ_V1;
                break;
            case "gptq_v2":
                packing = PackedIntWeight.Packing.GPTQ_V2;
                break;
            default:
                throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + " has GPTQ checkpoint format \"" + format
                        + "\"; loramerge reads \"gptq\" and \"gptq_v2\" (repacked formats such as marlin or bitblas are kernel layouts): "
                        + "re-save the model in the gptq format, or merge into the original 16-bit model");
        }
        return new Config("gptq", packing, bits, group, q.path("desc_act").asBoolean(false));
    }

    private static Config awq(JsonNode q, Path path) throws QuantException {
        int bits = intField(q, "bits", intField(q, "w_bit", -1, path), path);
        if (bits != 4) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + " has " + bits + "-bit AWQ; loramerge reads 4-bit AWQ only: "
                    + "merge into the original 16-bit model instead");
        }
        int group = intField(q, "group_size", intField(q, "q_group_size", 128, path), path);
        if (group <= 0) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".group_size is " + group + "; AWQ uses a positive group size");
        }
        String version = q.hasNonNull("version") ? q.get("version").asText() : q.path("format").asText("gemm");
        if (!version.toLowerCase(Locale.ROOT).equals("gemm")) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + " has AWQ version \"" + version + "\"; loramerge reads the GEMM "
                    + "layout (AutoAWQ's default): re-save the model with version GEMM, or merge into the original 16-bit model");
        }
        if (!q.path("zero_point").asBoolean(true)) {
            throw new QuantException(UNSUPPORTED_CONFIG, path, null, KEY + ".zero_point is false; loramerge reads AWQ with zero points "
                    + "(the default): merge into the original 16-bit model instead");
        }
        return new Config("awq", PackedIntWeight.Packing.AWQ_GEMM, 4, group, false);
    }

    private static TensorInfo require(Checkpoint c, String name, String weightName, Config config) throws QuantException {
        TensorInfo t = c.tensor(name);
        if (t == null) {
            throw new QuantException(MISSING_TENSOR, c.dir(), name, "is missing although '" + weightName + "' is a " + config.display()
                    + " weight that needs it; the checkpoint is incomplete");
        }
        return t;
    }

    private static QuantException mismatch(Checkpoint c, TensorInfo t, String want) {
        return new QuantException(TENSOR_MISMATCH, c.fileOf(t.name()).path(), t.name(), "is " + t.dtype() + TensorInfo.shapeString(t.shape())
                + " but " + want + "; the checkpoint is corrupt or its config.json describes another quantization");
    }

    private static PackedIntWeight open(Checkpoint c, String stem, Config config) throws QuantException, IOException {
        String weightName = stem + ".weight";
        TensorInfo qweight = require(c, stem + ".qweight", weightName, config);
        TensorInfo qzeros = require(c, stem + ".qzeros", weightName, config);
        TensorInfo scales = require(c, stem + ".scales", weightName, config);
        TensorInfo gIdx = c.tensor(stem + ".g_idx");
        int perWord = 32 / config.bits();
        for (TensorInfo t : new TensorInfo[] {qweight, qzeros}) {
            if (t.dtype() != DType.I32 || t.rank() != 2) {
                throw mismatch(c, t, "packed codes are 2-D I32 words (other packing dtypes are not read)");
            }
        }
        if ((scales.dtype() != DType.F16 && scales.dtype() != DType.BF16 && scales.dtype() != DType.F32) || scales.rank() != 2) {
            throw mismatch(c, scales, "scales are 2-D F16, BF16 or F32 [groups, out]");
        }
        long groups = scales.dim(0);
        long out = scales.dim(1);
        long in;
        boolean awq = config.packing() == PackedIntWeight.Packing.AWQ_GEMM;
        if (awq) {
            in = qweight.dim(0);
            if (out % 8 != 0 || qweight.dim(1) * 8 != out) {
                throw mismatch(c, qweight, "AWQ packs 8 output columns a word: [in, " + out + " / 8]");
            }
            if (qzeros.dim(0) != groups || qzeros.dim(1) * 8 != out) {
                throw mismatch(c, qzeros, "AWQ zeros are [groups = " + groups + ", out / 8 = " + out / 8 + "]");
            }
            if (groups * config.groupSize() < in || (groups - 1) * config.groupSize() >= in) {
                throw mismatch(c, scales, "group_size " + config.groupSize() + " makes ceil(" + in + " / " + config.groupSize() + ") groups");
            }
        } else {
            in = qweight.dim(0) * perWord;
            if (qweight.dim(1) != out) {
                throw mismatch(c, qweight, "GPTQ packs " + perWord + " input rows a word: [in / " + perWord + ", out = " + out + "]");
            }
            if (qzeros.dim(0) != groups || qzeros.dim(1) * perWord != out) {
                throw mismatch(c, qzeros, "GPTQ zeros are [groups = " + groups + ", out / " + perWord + "]");
            }
        }
        // zeros: every (group, out) pair, decoded
        ByteBuffer zb = c.fileOf(qzeros.name()).readAll(qzeros);
        int[] zeros = new int[Math.toIntExact(groups * out)];
        int zeroCols = (int) qzeros.dim(1);
        int maxq = (1 << config.bits()) - 1;
        for (int g = 0; g < groups; g++) {
            for (int w = 0; w < zeroCols; w++) {
                int word = zb.getInt((g * zeroCols + w) * 4);
                if (config.packing() == PackedIntWeight.Packing.GPTQ_V1) {
                    // GPTQModel's v1 -> v2 conversion: one int32 addition per word, carries included
                    word += config.bits() == 8 ? 0x01010101 : config.bits() == 4 ? 0x11111111 : 0x55555555;
                }
                for (int k = 0; k < (awq ? 8 : perWord); k++) {
                    int o = w * (awq ? 8 : perWord) + k;
                    int shift = awq ? 4 * AWQ_NIBBLE[k] : k * config.bits();
                    zeros[(int) (g * out + o)] = (word >>> shift) & maxq;
                }
            }
        }
        float[] s = new float[Math.toIntExact(groups * out)];
        ByteBuffer sb = c.fileOf(scales.name()).readAll(scales);
        FloatFormat sf = FloatFormat.of(scales.dtype());
        for (int k = 0; k < s.length; k++) {
            s[k] = (float) sf.decode(sf.bitsAt(sb, k));
            if (!Float.isFinite(s[k])) {
                throw mismatch(c, scales, "holds " + s[k] + " at " + k + ": scales are finite");
            }
        }
        int[] group = new int[Math.toIntExact(in)];
        List<String> names = new ArrayList<>(List.of(qweight.name(), qzeros.name(), scales.name()));
        boolean actOrder = false;
        if (gIdx != null && !awq) {
            if (gIdx.dtype() != DType.I32 || gIdx.rank() != 1 || gIdx.dim(0) != in) {
                throw mismatch(c, gIdx, "g_idx is I32 [in = " + in + "]");
            }
            ByteBuffer gb = c.fileOf(gIdx.name()).readAll(gIdx);
            for (int i = 0; i < in; i++) {
                group[i] = gb.getInt(i * 4);
                if (group[i] < 0 || group[i] >= groups) {
                    throw mismatch(c, gIdx, "holds group " + group[i] + " at " + i + ", outside the " + groups + " groups");
                }
                int plain = config.groupSize() > 0 ? i / config.groupSize() : 0;
                actOrder |= group[i] != plain;
            }
            names.add(gIdx.name());
        } else {
            long size = config.groupSize() > 0 ? config.groupSize() : in;
            for (int i = 0; i < in; i++) {
                group[i] = (int) (i / size);
                if (group[i] >= groups) {
                    throw mismatch(c, scales, "group size " + size + " needs more than its " + groups + " groups");
                }
            }
        }
        PackedIntWeight.Part part = new PackedIntWeight.Part(c.fileOf(qweight.name()), qweight);
        return new PackedIntWeight(stem + ".weight", config.packing(), config.bits(), config.groupSize(), part, out, in, zeros, s, group,
                scales.dtype(), names, actOrder);
    }

    /** Nibble of the k-th column of an AWQ word (see {@link PackedIntWeight}). */
    private static final int[] AWQ_NIBBLE = {0, 4, 1, 5, 2, 6, 3, 7};
}
