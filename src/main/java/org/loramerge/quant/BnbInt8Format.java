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
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
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

    /** An 8-bit weight written by {@code merge --to int8}: codes, SCB and weight_format, as the base had them. */
    record Int8Output(Int8Weight base) implements QuantizedOutput {
        @Override
        public String kind() {
            return "INT8";
        }

        @Override
        public List<SafetensorsWriter.Entry> entries(String weightName) {
            List<SafetensorsWriter.Entry> out = new ArrayList<>();
            out.add(new SafetensorsWriter.Entry(weightName, DType.I8, base.shape()));
            out.add(new SafetensorsWriter.Entry(base.tensorNames().get(1), DType.F32, new long[] {base.rows()}));
            if (base.tensorNames().size() > 2) {
                out.add(new SafetensorsWriter.Entry(base.tensorNames().get(2), DType.U8, new long[] {}));
            }
            return out;
        }

        @Override
        public int blockElements() {
            return Math.toIntExact(base.cols());
        }

        @Override
        public Requantizer requantizer(QuantizedWeight w) {
            if (w != base) {
                throw new IllegalArgumentException(w.weightName() + " is not the weight this output was made for");
            }
            return new Int8Requantizer(base);
        }
    }

    /**
     * Requantizes a merged 8-bit weight as bitsandbytes does when PEFT merges into one: Int8Params
     * casts the merged fp32 weight to fp16, and the CUDA kernel kInt8VectorQuant (csrc/kernels.cu,
     * built with fast math) codes each row: {@code absmax} = max |x| of the fp16 values (SCB),
     * {@code scale = __fdividef(127, absmax)}, which is {@code mul(127, rcp.approx(absmax))} (both
     * measured equal on the H200 for every fp16 value; {@link CudaFastMath}), {@code code =
     * __float2int_rn(mul(x, scale))}, round to nearest even; a zero row gives 0 · ∞ = NaN, which
     * converts to 0. Rows are independent, so ranges of whole rows stream.
     */
    static final class Int8Requantizer implements Requantizer {
        private final Int8Weight base;
        private final float[] scb;
        private final ByteCodes pending;
        private final ConcurrentHashMap<Long, Change> changes = new ConcurrentHashMap<>();

        Int8Requantizer(Int8Weight base) {
            this.base = base;
            this.pending = new ByteCodes(base.weightName());
            this.scb = new float[Math.toIntExact(base.rows())];
        }

        @Override
        public int blockElements() {
            return Math.toIntExact(base.cols());
        }

        /** One row's codes from its fp16 values {@code h}; returns its absmax (SCB). */
        static float quantizeRow(float[] h, byte[] codes, int off) {
            float absmax = 0f;
            for (float x : h) {
                absmax = Math.max(absmax, Math.abs(x));
            }
            float scale = CudaFastMath.mul(127f, CudaFastMath.rcp(absmax));
            for (int i = 0; i < h.length; i++) {
                float y = CudaFastMath.mul(h[i], scale);
                codes[off + i] = (byte) (Float.isNaN(y) ? 0 : (int) Math.rint(y));
            }
            return absmax;
        }

        private static float toF16(float x) {
            return (float) FloatFormat.F16.round(x);
        }

        @Override
        public void encode(long firstElement, int count, ByteBuffer merged, ByteBuffer w, double[] delta) throws QuantException {
            int cols = (int) base.cols();
            int rows = count / cols;
            byte[] out = new byte[count];
            byte[] outW = new byte[cols];
            float[] hx = new float[cols];
            float[] hw = new float[cols];
            long changed = 0;
            double sumSq = 0;
            double dot = 0;
            double d2 = 0;
            for (int r = 0; r < rows; r++) {
                for (int c = 0; c < cols; c++) {
                    float x = merged.getFloat(4 * (r * cols + c));
                    if (!Float.isFinite(x) || Math.abs(x) > 65504f) {
                        throw new QuantException(QuantException.Reason.NON_FINITE, base.file().path(), base.weightName(), "element "
                                + (firstElement + (long) r * cols + c) + " is " + x + ", which fp16 (where bitsandbytes quantizes 8-bit weights) "
                                + "cannot hold");
                    }
                    hx[c] = toF16(x);
                    hw[c] = toF16(w.getFloat(4 * (r * cols + c)));
                }
                long row = firstElement / cols + r;
                float sx = quantizeRow(hx, out, r * cols);
                float sw = quantizeRow(hw, outW, 0);
                scb[(int) row] = sx;
                for (int c = 0; c < cols; c++) {
                    int qx = out[r * cols + c];
                    int qw = outW[c];
                    double d = (double) Int8Weight.value(qx, sx) - Int8Weight.value(qw, sw);
                    double dw = delta[r * cols + c];
                    changed += qx != qw ? 1 : 0;
                    sumSq += d * d;
                    dot += d * dw;
                    d2 += dw * dw;
                }
            }
            pending.put(firstElement, out);
            changes.put(firstElement / cols, new Change(changed, sumSq, dot, d2));
        }

        @Override
        public long codesOffset(long firstElement) {
            return ByteCodes.offset(firstElement);
        }

        @Override
        public ByteBuffer codes(long firstElement, int count) {
            return pending.take(firstElement, count);
        }

        @Override
        public void finish() {
        }

        @Override
        public List<ByteBuffer> tail() {
            List<ByteBuffer> out = new ArrayList<>(List.of(Nf4Tensor.floats(scb)));
            if (base.tensorNames().size() > 2) {
                out.add(ByteBuffer.wrap(new byte[] {0})); // weight_format "row"
            }
            return out;
        }

        @Override
        public int chunks() {
            return Math.toIntExact(base.rows());
        }

        @Override
        public Change measure(int chunk) {
            return changes.getOrDefault((long) chunk, Change.NONE);
        }
    }

    /** One 8-bit weight: its codes, mapped when read, and its row scales. */
    public static final class Int8Weight implements QuantizedWeight {
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

        /** The output of {@code --to int8}: the same group, requantized as bitsandbytes' Int8Params does ({@link Int8Requantizer}). */
        @Override
        public QuantizedOutput requantizedOutput() {
            return new Int8Output(this);
        }

        public long rows() {
            return codes.dim(0);
        }

        public long cols() {
            return codes.dim(1);
        }

        /** Each row's SCB (its absmax), fp32. */
        public float[] rowScales() {
            return rowScales.clone();
        }

        @Override
        public String toString() {
            return weightName + " " + describe();
        }
    }
}
