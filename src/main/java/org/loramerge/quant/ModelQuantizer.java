package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.IntStream;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;

import static org.loramerge.quant.QuantException.Reason.ALREADY_QUANTIZED;
import static org.loramerge.quant.QuantException.Reason.UNSUPPORTED_CONFIG;

/**
 * Quantizes a 16-bit (or fp32) checkpoint as transformers + bitsandbytes save a 4-bit NF4 model:
 * every 2-D Linear weight becomes the tensor group of {@link Nf4Tensor}, everything else is copied
 * byte for byte, and config.json gets the {@code quantization_config} of {@link Bnb4BitConfig}.
 * Output shards keep the input's file names. This class decides and encodes ({@link #plan},
 * {@link #encode}); the pipeline's QuantizeRunner writes the model.
 *
 * <p>Streaming: one weight at a time, read once through memory-map windows; memory is the
 * current weight's codes and one float per block. A double-quantized quant state holds the mean
 * absmax, known after the weight's last block: it is a late tensor of its file
 * ({@link Nf4Tensor#layout}).
 */
public final class ModelQuantizer {
    /** Output heads transformers keeps in 16 bits (get_keys_to_not_convert: the output embedding and the last module). */
    private static final Set<String> HEADS = Set.of("lm_head", "embed_out", "score", "classifier", "qa_outputs", "output");
    /** Embedding modules: nn.Embedding, never a bitsandbytes Linear4bit. */
    private static final Set<String> EMBEDDINGS = Set.of("wte", "wpe", "shared", "word_embeddings", "position_embeddings",
            "token_type_embeddings", "tok_embeddings", "embed_tokens", "embed_positions", "embed_in", "embeddings");

    /** What to write: the code book (NF4 or FP4), the blocksize, double quantization or not. */
    public record Options(FourBitCode code, int blocksize, boolean doubleQuant) {
        public Options {
            if (!Nf4Codec.isValidBlocksize(blocksize)) {
                throw new IllegalArgumentException("--blocksize " + blocksize + ": expected a power of two from 32 to 4096 (bitsandbytes' default is 64)");
            }
        }

        /** NF4 options. */
        public Options(int blocksize, boolean doubleQuant) {
            this(FourBitCode.NF4, blocksize, doubleQuant);
        }
    }

    /** What was written; public fields for the --json summary. */
    public static final class Report {
        public String output;
        public String quantType;
        public int blocksize;
        public boolean doubleQuant;
        public String computeDtype;
        public int tensorsQuantized;
        public int tensorsCopied;
        public long bytesRead;
        public long bytesWritten;
        public double seconds;
        public double worstErrorOverAbsmax;
        public final List<QuantizedTensor> tensors = new ArrayList<>();
        public final List<Skipped> skipped = new ArrayList<>();
        public final List<String> warnings = new ArrayList<>();
    }

    /** One quantized weight: its worst |W - dequant(quant(W))| relative to its block's absmax. */
    public record QuantizedTensor(String name, String dtype, long[] shape, long blocks, double maxErrorOverAbsmax) {
    }

    /** A 2-D floating-point weight left unquantized, and why. */
    public record Skipped(String name, String reason) {
    }

    /**
     * One output file: the input file it comes from, its name, its tensors in order, the header
     * entries, and the quant state of each tensor that is quantized.
     */
    public record FilePlan(SafetensorsFile source, String fileName, List<TensorInfo> tensors, List<SafetensorsWriter.Entry> entries,
                           Map<String, QuantState> states) {
    }

    /**
     * What {@code quantize} writes, decided before any byte is.
     *
     * @param config       the config.json to write, or null when the model has none
     * @param computeDtype bnb_4bit_compute_dtype
     */
    public record Plan(List<FilePlan> files, boolean sharded, ObjectNode config, DType computeDtype, List<Skipped> skipped,
                       List<String> warnings) {
    }

    /** A quantized weight's bytes: the packed codes, then the rest of its group ({@link Nf4Tensor#layout} order), and its report line. */
    public record Encoded(ByteBuffer codes, List<ByteBuffer> tail, QuantizedTensor report) {
    }

    private ModelQuantizer() {
    }

    /**
     * Why the 2-D weight {@code name} is not quantized, or null when it is: transformers'
     * replace_with_bnb_linear converts nn.Linear modules only, and keeps the output head.
     */
    public static String skipReason(String name, TensorInfo t) {
        if (!name.endsWith(".weight") || t.rank() != 2) {
            return "not a 2-D weight";
        }
        if (!t.dtype().isMergeable()) {
            return t.dtype() + " is not a floating-point dtype bitsandbytes quantizes";
        }
        if (t.numElements() == 0) {
            return "empty";
        }
        String module = name.substring(0, name.length() - ".weight".length());
        String last = module.substring(module.lastIndexOf('.') + 1);
        if (HEADS.contains(last)) {
            return "output head (transformers keeps it in 16 bits)";
        }
        if (EMBEDDINGS.contains(last) || last.contains("embed")) {
            return "embedding (an nn.Embedding, not a Linear)";
        }
        if (last.contains("norm") || last.startsWith("ln")) {
            return "normalization";
        }
        return null;
    }

    /**
     * Plans the quantization of {@code base}: refuses a model that is already quantized or built
     * of Conv1D layers, picks the weights to quantize, and lays out every output file. A
     * double-quantized state's offset is a placeholder here; {@link #encode} computes it.
     */
    public static Plan plan(Checkpoint base, Options options) throws QuantException, IOException {
        Path configPath = base.dir().resolve("config.json");
        ObjectNode config = base.config();
        if (config != null && config.has(Bnb4BitConfig.KEY) && !config.get(Bnb4BitConfig.KEY).isNull()) {
            JsonNode m = config.get(Bnb4BitConfig.KEY).get("quant_method");
            throw new QuantException(ALREADY_QUANTIZED, configPath, null, "the model is already quantized (quantization_config, quant_method "
                    + (m == null ? "unknown" : m.asText()) + "); quantize the original 16-bit model");
        }
        for (String name : base.tensors().keySet()) {
            if (name.contains(".quant_state.")) {
                throw new QuantException(ALREADY_QUANTIZED, base.fileOf(name).path(), name,
                        "is a bitsandbytes quant state: the model is already quantized; quantize the original 16-bit model");
            }
        }
        if (base.usesConv1D()) {
            throw new QuantException(UNSUPPORTED_CONFIG, configPath, null, "model_type " + base.modelType()
                    + " uses transformers' Conv1D layers (weight [in, out]), which transformers transposes before quantizing; "
                    + "loramerge quantize supports nn.Linear models");
        }
        List<Skipped> skipped = new ArrayList<>();
        List<String> warnings = new ArrayList<>();
        Map<String, DType> quantized = new LinkedHashMap<>();
        for (Map.Entry<String, TensorInfo> e : base.tensors().entrySet()) {
            TensorInfo t = e.getValue();
            String why = skipReason(e.getKey(), t);
            if (why == null) {
                quantized.put(e.getKey(), t.dtype());
            } else if (e.getKey().endsWith(".weight") && t.rank() == 2) {
                skipped.add(new Skipped(e.getKey(), why));
            }
        }
        DType compute = computeDtype(quantized, config);
        if (quantized.isEmpty()) {
            warnings.add("no 2-D Linear weight found: the output is a copy with a quantization_config");
        }
        List<FilePlan> files = new ArrayList<>();
        for (SafetensorsFile file : base.files()) {
            String fileName = base.isSharded() ? file.path().getFileName().toString() : "model.safetensors";
            List<TensorInfo> tensors = new ArrayList<>();
            for (TensorInfo t : file.tensors()) {
                if (base.tensor(t.name()) == t) {
                    tensors.add(t);
                }
            }
            List<SafetensorsWriter.Entry> entries = new ArrayList<>();
            Map<String, QuantState> states = new LinkedHashMap<>();
            for (TensorInfo t : tensors) {
                if (!quantized.containsKey(t.name())) {
                    entries.add(new SafetensorsWriter.Entry(t.name(), t.dtype(), t.shape()));
                    continue;
                }
                QuantState.Nested nested = options.doubleQuant() ? new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, 0f) : null;
                QuantState state = QuantState.of(options.code(), options.blocksize(), t.dtype(), t.shape(), nested);
                states.put(t.name(), state);
                entries.addAll(Nf4Tensor.layout(t.name(), state));
            }
            files.add(new FilePlan(file, fileName, tensors, entries, Collections.unmodifiableMap(states)));
        }
        ObjectNode newConfig = null;
        if (config != null) {
            newConfig = withQuantizationConfig(config, Bnb4BitConfig.toJson(options.code(), options.doubleQuant(), compute));
        } else {
            warnings.add("the model folder has no config.json: transformers needs one with quantization_config to load the 4-bit weights");
        }
        return new Plan(files, base.isSharded(), newConfig, compute, skipped, warnings);
    }

    /** Elements per parallel chunk: a multiple of every blocksize (at most 4096), about 8 MB of BF16. */
    private static final int CHUNK_ELEMENTS = 1 << 22;

    /**
     * Quantizes one weight on all cores: chunks of whole blocks are encoded independently
     * ({@link Nf4Encoder#encodeBlocks}, the same bytes as the streaming encoder) into the weight's
     * packed codes, held in memory (half a byte an element) until the group is written in order;
     * then the absmax values are double-quantized when {@code state} says so.
     */
    public static Encoded encode(SafetensorsFile file, TensorInfo t, QuantState state) throws IOException, QuantException {
        long n = t.numElements();
        int blocksize = state.blocksize();
        byte[] packed = new byte[Math.toIntExact(Nf4Codec.packedBytes(n))];
        float[] absmax = new float[Math.toIntExact(Nf4Codec.numBlocks(n, blocksize))];
        FloatFormat format = FloatFormat.of(t.dtype());
        int es = t.dtype().sizeInBytes();
        int chunks = (int) ((n + CHUNK_ELEMENTS - 1) / CHUNK_ELEMENTS);
        double[] maxError = new double[chunks];
        try {
            IntStream.range(0, chunks).parallel().forEach(c -> {
                long first = (long) c * CHUNK_ELEMENTS;
                int count = (int) Math.min(CHUNK_ELEMENTS, n - first);
                try (MappedRegion r = file.map(t, first * es, (long) count * es)) {
                    maxError[c] = Nf4Encoder.encodeBlocks(state.code(), r.bytes(), format, n, blocksize, first, count, packed, absmax, file.path(),
                            t.name());
                } catch (IOException | QuantException e) {
                    throw new ChunkFailure(e);
                }
            });
        } catch (ChunkFailure f) {
            f.rethrow();
        }
        double worst = 0;
        for (double e : maxError) {
            worst = Math.max(worst, e);
        }
        return new Encoded(ByteBuffer.wrap(packed), Nf4Tensor.tail(state, absmax, file.path(), t.name(),
                "drop --double-quant (plain fp32 absmax), or scale the weight down"),
                new QuantizedTensor(t.name(), t.dtype().name(), t.shape(), absmax.length, worst));
    }

    /** Carries a checked failure out of a parallel stream. */
    private static final class ChunkFailure extends RuntimeException {
        private static final long serialVersionUID = 1L;

        ChunkFailure(Exception cause) {
            super(cause);
        }

        void rethrow() throws IOException, QuantException {
            if (getCause() instanceof QuantException) {
                throw (QuantException) getCause();
            }
            throw (IOException) getCause();
        }
    }

    /**
     * bnb_4bit_compute_dtype: the dtype of the quantized weights when they agree (what QLoRA runs
     * in), else config.json's dtype, else float32 (transformers' default).
     */
    static DType computeDtype(Map<String, DType> quantized, ObjectNode config) {
        Set<DType> kinds = new HashSet<>(quantized.values());
        if (kinds.size() == 1) {
            return kinds.iterator().next();
        }
        if (config != null) {
            for (String key : new String[] {"dtype", "torch_dtype"}) {
                if (config.hasNonNull(key)) {
                    DType d = DType.parseUserName(config.get(key).asText());
                    if (d != null) {
                        return d;
                    }
                }
            }
        }
        return DType.F32;
    }

    /** config.json with quantization_config added; kept in sorted key order when it was sorted (as save_pretrained writes it). */
    static ObjectNode withQuantizationConfig(ObjectNode config, ObjectNode quantization) {
        ObjectNode c = config.deepCopy();
        List<String> keys = new ArrayList<>();
        for (Iterator<String> it = c.fieldNames(); it.hasNext(); ) {
            keys.add(it.next());
        }
        boolean sorted = true;
        for (int i = 1; i < keys.size(); i++) {
            sorted &= keys.get(i - 1).compareTo(keys.get(i)) <= 0;
        }
        c.set(Bnb4BitConfig.KEY, quantization);
        if (!sorted) {
            return c;
        }
        ObjectNode out = c.objectNode();
        keys.add(Bnb4BitConfig.KEY);
        keys.stream().sorted().distinct().forEach(k -> out.set(k, c.get(k)));
        return out;
    }
}
