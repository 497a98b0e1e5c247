package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;

import static org.loramerge.quant.QuantException.Reason.MISSING_TENSOR;
import static org.loramerge.quant.QuantException.Reason.TENSOR_MISMATCH;

/**
 * One bitsandbytes NF4 weight in a checkpoint: the group of tensors transformers saves for a
 * 4-bit Linear at module prefix {@code P} (bitsandbytes nn/modules.py Linear4bit
 * _save_to_state_dict, QuantState.as_dict(packed=True)), validated against its quant state:
 *
 * <pre>
 * P.weight                                U8  [ceil(n/2), 1]   two codes per byte
 * P.weight.absmax                         F32 [nblocks], or U8 [nblocks] when double-quantized
 * P.weight.quant_map                      F32 [16]             the NF4 table
 * P.weight.nested_absmax                  F32 [ceil(nblocks/256)]   (double quant only)
 * P.weight.nested_quant_map               F32 [256]            the dynamic map (double quant only)
 * P.weight.quant_state.bitsandbytes__nf4  U8  [len]            JSON, see {@link QuantState}
 * </pre>
 *
 * The parts may sit in different shards. Nothing is read beyond the quant state and the two small
 * tables until a {@link Nf4Decoder} asks for a range.
 */
public final class Nf4Tensor {
    public static final String ABSMAX = ".absmax";
    public static final String QUANT_MAP = ".quant_map";
    public static final String NESTED_ABSMAX = ".nested_absmax";
    public static final String NESTED_QUANT_MAP = ".nested_quant_map";
    /** The largest quant state accepted: bitsandbytes' are about 200 bytes. */
    static final int MAX_QUANT_STATE_BYTES = 1 << 16;

    /** A tensor of the group and the file that holds it. */
    public record Part(SafetensorsFile file, TensorInfo info) {
        public String name() {
            return info.name();
        }
    }

    private final String weightName;
    private final QuantState state;
    private final Part weight;
    private final Part absmax;
    private final Part quantMap;
    private final Part nestedAbsmax;
    private final Part nestedQuantMap;
    private final Part quantState;
    private final List<String> warnings;

    private Nf4Tensor(String weightName, QuantState state, Part weight, Part absmax, Part quantMap, Part nestedAbsmax,
                      Part nestedQuantMap, Part quantState, List<String> warnings) {
        this.weightName = weightName;
        this.state = state;
        this.weight = weight;
        this.absmax = absmax;
        this.quantMap = quantMap;
        this.nestedAbsmax = nestedAbsmax;
        this.nestedQuantMap = nestedQuantMap;
        this.quantState = quantState;
        this.warnings = warnings;
    }

    /** Finds and validates the group of {@code weightName} (e.g. {@code model.layers.0.mlp.up_proj.weight}). */
    public static Nf4Tensor open(Checkpoint c, String weightName) throws QuantException, IOException {
        return open(c, weightName, c.tensor(weightName + QuantState.FP4_TENSOR_SUFFIX) != null
                ? QuantState.FP4_TENSOR_SUFFIX : QuantState.TENSOR_SUFFIX);
    }

    /** {@link #open(Checkpoint, String)} with the quant state named {@code weightName + stateSuffix} (nf4 or fp4). */
    static Nf4Tensor open(Checkpoint c, String weightName, String stateSuffix) throws QuantException, IOException {
        String qsName = weightName + stateSuffix;
        Part qs = part(c, qsName);
        if (qs == null) {
            throw new QuantException(MISSING_TENSOR, c.dir(), qsName, "the quant state of 4-bit weight '" + weightName
                    + "' is missing; the checkpoint is incomplete (re-save it with transformers' save_pretrained)");
        }
        if (qs.info().dtype() != DType.U8 || qs.info().rank() != 1 || qs.info().sizeInBytes() > MAX_QUANT_STATE_BYTES) {
            throw new QuantException(TENSOR_MISMATCH, qs.file().path(), qsName, "quant state is " + describe(qs.info())
                    + "; bitsandbytes stores it as a 1-D U8 tensor of JSON bytes (at most " + MAX_QUANT_STATE_BYTES + ")");
        }
        ByteBuffer b = qs.file().readAll(qs.info());
        byte[] json = new byte[b.remaining()];
        b.get(json);
        QuantState state = QuantState.parse(json, qs.file().path(), qsName);
        long n = state.numElements();
        long blocks = state.numBlocks();
        List<String> warnings = new ArrayList<>();

        Part weight = require(c, weightName, qsName);
        expect(weight, DType.U8, new long[] {Nf4Codec.packedBytes(n), 1},
                "two 4-bit codes per byte for the " + n + " elements of shape " + Arrays.toString(state.shape()));
        Part absmax = require(c, weightName + ABSMAX, qsName);
        Part quantMap = require(c, weightName + QUANT_MAP, qsName);
        expect(quantMap, DType.F32, new long[] {16}, "the 16 values of the code book");
        Part nestedAbsmax = part(c, weightName + NESTED_ABSMAX);
        Part nestedQuantMap = part(c, weightName + NESTED_QUANT_MAP);
        if (state.isDoubleQuant()) {
            expect(absmax, DType.U8, new long[] {blocks}, "one 8-bit code per block of " + state.blocksize() + " (double quantization)");
            if (nestedAbsmax == null) {
                throw missing(c, weightName + NESTED_ABSMAX, qsName);
            }
            if (nestedQuantMap == null) {
                throw missing(c, weightName + NESTED_QUANT_MAP, qsName);
            }
            long nestedBlocks = (blocks + state.nested().blocksize() - 1) / state.nested().blocksize();
            expect(nestedAbsmax, DType.F32, new long[] {nestedBlocks}, "one value per " + state.nested().blocksize() + " absmax codes");
            expect(nestedQuantMap, DType.F32, new long[] {256}, "the 256-entry dynamic map");
        } else {
            expect(absmax, DType.F32, new long[] {blocks}, "one fp32 absmax per block of " + state.blocksize());
            for (Part stray : new Part[] {nestedAbsmax, nestedQuantMap}) {
                if (stray != null) {
                    throw new QuantException(TENSOR_MISMATCH, stray.file().path(), stray.name(),
                            "is present but the quant state has no double-quantization fields; the checkpoint mixes two saves");
                }
            }
        }
        float[] map = readFloats(quantMap);
        // bitsandbytes' kernels decode with their built-in table and ignore quant_map; so do we
        if (!Arrays.equals(map, state.code().quantMap())) {
            warnings.add(quantMap.name() + " differs from the " + state.code() + " table; it is ignored, as bitsandbytes ignores it");
        }
        if (state.blocksize() >= PRE_047_OR_BLOCKSIZE && looksOrPacked(weight)) {
            warnings.add(weightName + " (blocksize " + state.blocksize() + ") looks quantized by bitsandbytes before 0.47, which packed "
                    + "blocksizes of 1024 and more wrongly: the codes of elements 4k+2 and 4k+3 were OR-ed with those of 4k and 4k+1. "
                    + "loramerge reads the codes as stored, as every bitsandbytes version does, so the merge is into the weights the "
                    + "adapter was trained on; a base requantized from the 16-bit model with bitsandbytes 0.47 or later is closer to it");
        }
        return new Nf4Tensor(weightName, state, weight, absmax, quantMap, nestedAbsmax, nestedQuantMap, qs, warnings);
    }

    /** bitsandbytes before 0.47 ran 4 elements a thread for these blocksizes and OR-ed its two bytes (csrc/kernels.cu kQuantizeBlockwise). */
    static final int PRE_047_OR_BLOCKSIZE = 1024;
    /** Bytes of a weight's codes {@link #looksOrPacked} reads. */
    private static final int OR_SAMPLE_BYTES = 1 << 16;
    /** Pairs whose first byte is not 0 that must all be OR-ed: a correctly packed weight passes one with probability below 1/2. */
    private static final int OR_EVIDENCE_PAIRS = 128;

    /**
     * Whether the first bytes of a 4-bit weight's codes show the pre-0.47 packing: every byte
     * 2k+1 holds all the bits of byte 2k, over at least {@link #OR_EVIDENCE_PAIRS} pairs whose
     * byte 2k is not zero.
     */
    static boolean looksOrPacked(Part weight) throws IOException {
        long bytes = Math.min(OR_SAMPLE_BYTES, weight.info().sizeInBytes()) & ~1L;
        if (bytes < 2) {
            return false;
        }
        int evidence = 0;
        try (MappedRegion r = weight.file().map(weight.info(), 0, bytes)) {
            ByteBuffer b = r.bytes();
            for (int i = 0; i + 1 < bytes; i += 2) {
                int first = b.get(i) & 0xFF;
                int second = b.get(i + 1) & 0xFF;
                if ((first & second) != first) {
                    return false;
                }
                evidence += first != 0 && first != second ? 1 : 0;
            }
        }
        return evidence >= OR_EVIDENCE_PAIRS;
    }

    private static Part part(Checkpoint c, String name) {
        TensorInfo t = c.tensor(name);
        return t == null ? null : new Part(c.fileOf(name), t);
    }

    private static Part require(Checkpoint c, String name, String qsName) throws QuantException {
        Part p = part(c, name);
        if (p == null) {
            throw missing(c, name, qsName);
        }
        return p;
    }

    private static QuantException missing(Checkpoint c, String name, String qsName) {
        return new QuantException(MISSING_TENSOR, c.dir(), name, "is missing although '" + qsName
                + "' describes a 4-bit weight that needs it; the checkpoint is incomplete");
    }

    private static void expect(Part p, DType dtype, long[] shape, String what) throws QuantException {
        if (p.info().dtype() != dtype || !Arrays.equals(p.info().shape(), shape)) {
            throw new QuantException(TENSOR_MISMATCH, p.file().path(), p.name(), "is " + describe(p.info()) + " but its quant state needs "
                    + dtype + Arrays.toString(shape) + " (" + what + ")"
                    + (dtype == DType.U8 && p.info().dtype() != DType.U8 && p.name().endsWith(".weight")
                    ? "; packed storage other than uint8 (bnb_4bit_quant_storage) is not supported" : ""));
        }
    }

    private static String describe(TensorInfo t) {
        return t.dtype() + Arrays.toString(t.shape());
    }

    static float[] readFloats(Part p) throws IOException {
        ByteBuffer b = p.file().readAll(p.info());
        float[] out = new float[(int) (p.info().sizeInBytes() / 4)];
        b.asFloatBuffer().get(out);
        return out;
    }

    /**
     * The tensors of a quantized weight as an output header lists them, {@code P.weight} first, then
     * bitsandbytes' as_dict order: absmax, quant_map, [nested_absmax, nested_quant_map], quant state.
     * With double quantization the quant state JSON holds the offset, the mean absmax of the whole
     * weight, whose decimal form has no fixed length: it is a late tensor
     * ({@link SafetensorsWriter.Entry#late}) of at most {@link QuantState#maxJsonLength} bytes, so
     * that it can be written exactly as bitsandbytes writes it once the offset is known, without a
     * first pass over the weight. Without it the JSON's length is fixed.
     */
    public static List<SafetensorsWriter.Entry> layout(String weightName, QuantState state) {
        long n = state.numElements();
        long blocks = state.numBlocks();
        List<SafetensorsWriter.Entry> out = new ArrayList<>();
        out.add(new SafetensorsWriter.Entry(weightName, DType.U8, new long[] {Nf4Codec.packedBytes(n), 1}));
        out.add(new SafetensorsWriter.Entry(weightName + ABSMAX, state.isDoubleQuant() ? DType.U8 : DType.F32, new long[] {blocks}));
        out.add(new SafetensorsWriter.Entry(weightName + QUANT_MAP, DType.F32, new long[] {16}));
        String qs = weightName + state.tensorSuffix();
        if (state.isDoubleQuant()) {
            long nested = (blocks + state.nested().blocksize() - 1) / state.nested().blocksize();
            out.add(new SafetensorsWriter.Entry(weightName + NESTED_ABSMAX, DType.F32, new long[] {nested}));
            out.add(new SafetensorsWriter.Entry(weightName + NESTED_QUANT_MAP, DType.F32, new long[] {256}));
            out.add(SafetensorsWriter.Entry.late(qs, DType.U8, state.maxJsonLength()));
        } else {
            out.add(new SafetensorsWriter.Entry(qs, DType.U8, new long[] {state.toJson().length}));
        }
        return out;
    }

    /**
     * The bytes of every tensor after {@code P.weight}, in {@link #layout} order, for the block
     * absmax values an {@link Nf4Encoder} returned. With double quantization the absmax values are
     * quantized here and the quant state takes their offset. The quant state JSON is exactly
     * bitsandbytes' ({@link QuantState#toJson()}).
     */
    public static List<ByteBuffer> tail(QuantState state, float[] absmax) {
        if (absmax.length != state.numBlocks()) {
            throw new IllegalArgumentException(absmax.length + " absmax values for " + state.numBlocks() + " blocks");
        }
        if (!state.isDoubleQuant()) {
            return tail(state, absmax, null);
        }
        DoubleQuant.Result dq = DoubleQuant.quantize(absmax, absmax.length);
        QuantState withOffset = state.withNested(new QuantState.Nested(state.nested().blocksize(), dq.offset()));
        return tail(withOffset, absmax, dq);
    }

    /**
     * {@link #tail(QuantState, float[])} of weight {@code tensor} of {@code path}, refused as bad input
     * when its absmax values have no finite double quantization offset ({@link DoubleQuant#requireFiniteOffset}).
     */
    public static List<ByteBuffer> tail(QuantState state, float[] absmax, Path path, String tensor, String remedy) throws QuantException {
        if (absmax.length != state.numBlocks()) {
            throw new IllegalArgumentException(absmax.length + " absmax values for " + state.numBlocks() + " blocks");
        }
        if (!state.isDoubleQuant()) {
            return tail(state, absmax, null);
        }
        DoubleQuant.Result dq = DoubleQuant.quantize(absmax, absmax.length);
        DoubleQuant.requireFiniteOffset(dq.offset(), absmax.length, path, tensor, remedy);
        QuantState withOffset = state.withNested(new QuantState.Nested(state.nested().blocksize(), dq.offset()));
        return tail(withOffset, absmax, dq);
    }

    /**
     * As {@link #tail(QuantState, float[])}, with the double quantization already done (by the GPU
     * engine): {@code dq} when the state is double-quantized (its offset must be the state's), else
     * {@code absmax}.
     */
    public static List<ByteBuffer> tail(QuantState state, float[] absmax, DoubleQuant.Result dq) {
        List<ByteBuffer> out = new ArrayList<>();
        if (state.isDoubleQuant()) {
            if (state.nested().blocksize() != DoubleQuant.NESTED_BLOCKSIZE) {
                throw new IllegalArgumentException("loramerge writes nested blocks of " + DoubleQuant.NESTED_BLOCKSIZE + ", as bitsandbytes does");
            }
            if (dq == null || dq.codes().length != state.numBlocks()) {
                throw new IllegalArgumentException("double-quantized absmax of " + (dq == null ? 0 : dq.codes().length) + " blocks for "
                        + state.numBlocks());
            }
            if (Float.floatToRawIntBits(dq.offset()) != Float.floatToRawIntBits(state.nested().offset())) {
                throw new IllegalArgumentException("the quant state's offset " + state.nested().offset() + " is not the mean absmax " + dq.offset());
            }
            out.add(ByteBuffer.wrap(dq.codes()));
            out.add(floats(state.code().quantMap()));
            out.add(floats(dq.nestedAbsmax()));
            out.add(floats(DynamicMap.signed()));
        } else {
            if (absmax == null || absmax.length != state.numBlocks()) {
                throw new IllegalArgumentException((absmax == null ? 0 : absmax.length) + " absmax values for " + state.numBlocks() + " blocks");
            }
            out.add(floats(absmax));
            out.add(floats(state.code().quantMap()));
        }
        out.add(ByteBuffer.wrap(state.toJson()));
        return out;
    }

    /** {@code values} as a safetensors F32 tensor's bytes (little-endian). */
    static ByteBuffer floats(float[] values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(values);
        return b;
    }

    /** A decoder for ranges of this weight. */
    public Nf4Decoder decoder() throws IOException, QuantException {
        return new Nf4Decoder(this);
    }

    /** The name of the dequantized weight ({@code P.weight}). */
    public String weightName() {
        return weightName;
    }

    public QuantState state() {
        return state;
    }

    public long[] shape() {
        return state.shape();
    }

    public DType dtype() {
        return state.dtype();
    }

    public long numElements() {
        return state.numElements();
    }

    public int blocksize() {
        return state.blocksize();
    }

    public boolean isDoubleQuant() {
        return state.isDoubleQuant();
    }

    public Part weight() {
        return weight;
    }

    public Part absmax() {
        return absmax;
    }

    /** null unless double-quantized. */
    public Part nestedAbsmax() {
        return nestedAbsmax;
    }

    /** null unless double-quantized. */
    public Part nestedQuantMap() {
        return nestedQuantMap;
    }

    /** Every tensor name of the group, {@code P.weight} first. */
    public List<String> tensorNames() {
        List<String> out = new ArrayList<>();
        for (Part p : new Part[] {weight, absmax, quantMap, nestedAbsmax, nestedQuantMap, quantState}) {
            if (p != null) {
                out.add(p.name());
            }
        }
        return out;
    }

    public List<String> warnings() {
        return Collections.unmodifiableList(warnings);
    }

    /** The file of the quant state (for messages). */
    Path statePath() {
        return quantState.file().path();
    }

    @Override
    public String toString() {
        return weightName + " NF4 " + state;
    }
}
