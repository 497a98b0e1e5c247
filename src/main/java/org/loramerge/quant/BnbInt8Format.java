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
import java.util.Map;
import java.util.Set;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

import static org.loramerge.quant.QuantException.Reason.MISSING_TENSOR;
import static org.loramerge.quant.QuantException.Reason.TENSOR_MISMATCH;
import static org.loramerge.quant.QuantException.Reason.UNSUPPORTED_CONFIG;

/**
 * bitsandbytes 8-bit (LLM.int8) weights, as transformers saves a model loaded with
 * {@code load_in_8bit} (bitsandbytes nn/modules.py Linear8bitLt._save_to_state_dict): {@code P.weight}
 * I8 {@code [out, in]}, {@code P.SCB} F32 {@code [out]} (each row's absmax), and {@code P.weight_format}
 * U8 scalar 0 ("row", the only layout bitsandbytes still reads). Docs/FORMATS.md §5.
 *
 * <p>Dequantized as bitsandbytes' {@code int8_vectorwise_dequant} (bitsandbytes _ops.py, the default
 * kernel, which PEFT's 8-bit merge calls): {@code A * stats.view(-1, 1) * 7.874015718698502e-3} in
 * fp32, {@code fl32(fl32(q · SCB) · fl32(1/127 as that decimal))}, so the weights dequantize to F32.
 * A checkpoint that holds weights in another layout ({@code weight_format} other than 0, the col32
 * and Ampere/Turing formats of bitsandbytes before 0.45) is refused, as bitsandbytes refuses it.
 */
public final class BnbInt8Format implements WeightFormat {
    public static final BnbInt8Format INSTANCE = new BnbInt8Format();
    /** bitsandbytes' 1/127 as the decimal int8_vectorwise_dequant multiplies by, in fp32. */
    static final float INV127 = 7.874015718698502e-3f;

    private BnbInt8Format() {
    }

    @Override
    public String name() {
        return "bitsandbytes 8-bit (LLM.int8)";
    }

    @Override
    public QuantizedModel detect(Checkpoint c) throws QuantException, IOException {
        JsonNode q = c.config() == null ? null : c.config().get("quantization_config");
        boolean in8 = q != null && q.isObject() && "bitsandbytes".equals(q.path("quant_method").asText(null))
                && (q.path("load_in_8bit").asBoolean(false) || q.path("_load_in_8bit").asBoolean(false));
        boolean scb = c.tensors().keySet().stream().anyMatch(n -> n.endsWith(".SCB"));
        if (!in8 && !scb) {
            return QuantizedModel.none();
        }
        Map<String, QuantizedWeight> weights = new LinkedHashMap<>();
        Set<String> members = new LinkedHashSet<>();
        List<String> warnings = new ArrayList<>();
        for (TensorInfo t : c.tensors().values()) {
            if (!t.name().endsWith(".SCB")) {
                continue;
            }
            String stem = t.name().substring(0, t.name().length() - ".SCB".length());
            Int8Weight w = open(c, stem, t);
            weights.put(w.weightName(), w);
            members.addAll(w.tensorNames());
        }
        for (TensorInfo t : c.tensors().values()) {
            if (t.name().endsWith(".weight_format") && !members.contains(t.name())) {
                throw new QuantException(MISSING_TENSOR, c.fileOf(t.name()).path(), t.name().replace(".weight_format", ".SCB"),
                        "is missing but '" + t.name() + "' is present; an 8-bit weight needs its row scales (the checkpoint is incomplete)");
            }
        }
        if (!in8) {
            warnings.add(weights.size() + " weights are 8-bit (LLM.int8) but config.json has no load_in_8bit quantization_config; "
                    + "transformers will not load them as 8-bit without it");
        }
        return new QuantizedModel(this, "quantization_config", Collections.unmodifiableMap(weights), Collections.unmodifiableSet(members),
                Collections.unmodifiableList(warnings));
    }

    private static Int8Weight open(Checkpoint c, String stem, TensorInfo scb) throws QuantException, IOException {
        String name = stem + ".weight";
        TensorInfo w = c.tensor(name);
        Path scbPath = c.fileOf(scb.name()).path();
        if (w == null) {
            throw new QuantException(MISSING_TENSOR, scbPath, name, "is missing although '" + scb.name() + "' holds its row scales; "
                    + "the checkpoint is incomplete");
        }
        if (w.dtype() != DType.I8 || w.rank() != 2) {
            throw new QuantException(TENSOR_MISMATCH, c.fileOf(name).path(), name, "is " + w.dtype() + TensorInfo.shapeString(w.shape())
                    + " but an 8-bit weight is I8 [out, in]; the checkpoint is corrupt");
        }
        if (scb.dtype() != DType.F32 || scb.rank() != 1 || scb.dim(0) != w.dim(0)) {
            throw new QuantException(TENSOR_MISMATCH, scbPath, scb.name(), "is " + scb.dtype() + TensorInfo.shapeString(scb.shape())
                    + " but the row scales of " + name + " are F32 [" + w.dim(0) + "]; the checkpoint is corrupt");
        }
        List<String> names = new ArrayList<>(List.of(name, scb.name()));
        TensorInfo fmt = c.tensor(stem + ".weight_format");
        if (fmt != null) {
            ByteBuffer b = c.fileOf(fmt.name()).readAll(fmt);
            int value = fmt.numElements() == 1 && (fmt.dtype() == DType.U8 || fmt.dtype() == DType.I8) ? b.get(0) : -1;
            if (value != 0) {
                throw new QuantException(UNSUPPORTED_CONFIG, c.fileOf(fmt.name()).path(), fmt.name(), "says the 8-bit weight is stored in "
                        + "layout " + value + " (bitsandbytes' col32/Turing/Ampere formats of old releases), which bitsandbytes itself no "
                        + "longer reads; re-save the model with a current bitsandbytes, or merge into the original 16-bit model");
            }
            names.add(fmt.name());
        }
        ByteBuffer sb = c.fileOf(scb.name()).readAll(scb);
        float[] rowScales = new float[Math.toIntExact(scb.dim(0))];
        sb.asFloatBuffer().get(rowScales);
        for (int i = 0; i < rowScales.length; i++) {
            if (!Float.isFinite(rowScales[i])) {
                throw new QuantException(TENSOR_MISMATCH, scbPath, scb.name(), "holds " + rowScales[i] + " at row " + i + "; the file is corrupt");
            }
        }
        return new Int8Weight(name, c.fileOf(name), w, rowScales, names);
    }

    /** One 8-bit weight: its codes, mapped when read, and its row scales. */
    static final class Int8Weight implements QuantizedWeight {
        private final String weightName;
        private final SafetensorsFile file;
        private final TensorInfo codes;
        private final float[] rowScales;
        private final List<String> tensorNames;

        Int8Weight(String weightName, SafetensorsFile file, TensorInfo codes, float[] rowScales, List<String> tensorNames) {
            this.weightName = weightName;
            this.file = file;
            this.codes = codes;
            this.rowScales = rowScales;
            this.tensorNames = List.copyOf(tensorNames);
        }

        @Override
        public String weightName() {
            return weightName;
        }

        @Override
        public String kind() {
            return "int8";
        }

        @Override
        public DType dtype() {
            return DType.F32;
        }

        @Override
        public long[] shape() {
            return codes.shape();
        }

        @Override
        public long numElements() {
            return codes.numElements();
        }

        @Override
        public List<String> tensorNames() {
            return tensorNames;
        }

        @Override
        public SafetensorsFile file() {
            return file;
        }

        @Override
        public String describe() {
            return "LLM.int8 (bitsandbytes), int8 per row with SCB scales, dequantized in float32";
        }

        /** {@code fl32(fl32(q · SCB) · fl32(1/127))}: int8_vectorwise_dequant. */
        static float value(int q, float scb) {
            float product = q * scb;
            return product * INV127;
        }

        @Override
        public void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException {
            if (firstElement < 0 || count < 0 || firstElement + count > numElements()) {
                throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") outside " + weightName);
            }
            long cols = codes.dim(1);
            try (MappedRegion r = file.map(codes, firstElement, count)) {
                ByteBuffer b = r.bytes();
                for (int i = 0; i < count; i++) {
                    long e = firstElement + i;
                    dst.putFloat(i * 4, value(b.get(i), rowScales[(int) (e / cols)]));
                }
            }
        }

        @Override
        public MappedRegion storedCodes(long firstElement, int count) throws IOException {
            return file.map(codes, firstElement, count);
        }

        @Override
        public QuantizedOutput requantizedOutput() {
            throw new UnsupportedOperationException(weightName + ": 8-bit requantization is not implemented");
        }

        @Override
        public String toString() {
            return weightName + " " + describe();
        }
    }
}
