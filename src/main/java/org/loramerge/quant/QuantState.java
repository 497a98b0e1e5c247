package org.loramerge.quant;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.json.JsonReadFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Objects;
import java.util.Set;
import org.loramerge.format.DType;
import org.loramerge.format.PythonFloat;

import static org.loramerge.quant.QuantException.Reason.*;

/**
 * The JSON quant state of one 4-bit weight, stored as the U8 tensor
 * {@code P.weight.quant_state.bitsandbytes__nf4}: bitsandbytes' {@code QuantState.as_dict(packed=True)}
 * keeps the non-tensor fields there as {@code json.dumps} bytes (bitsandbytes utils.py
 * pack_dict_to_tensor), e.g. {@code {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16",
 * "shape": [out, in], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}}.
 * The nested fields are present exactly when the absmax values are double-quantized.
 *
 * <p>{@link #parse} validates every field and rejects anything bitsandbytes' {@code from_dict}
 * would not read the same way; {@link #toJson} writes the bytes bitsandbytes writes.
 */
public final class QuantState {
    /** The suffix after {@code P.weight} of the quant state tensor of an NF4 weight. */
    public static final String TENSOR_SUFFIX = ".quant_state.bitsandbytes__nf4";
    /** The same for FP4. */
    public static final String FP4_TENSOR_SUFFIX = ".quant_state.bitsandbytes__fp4";

    private static final ObjectMapper JSON = JsonMapper.builder()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS) // Python's json.dumps writes NaN/Infinity; reject them by name below
            .build();

    private static final List<String> PLAIN_FIELDS = List.of("quant_type", "blocksize", "dtype", "shape");
    private static final List<String> NESTED_FIELDS = List.of("nested_blocksize", "nested_dtype", "nested_offset");

    /** The double-quantization fields: nested blocksize and the mean subtracted before quantizing. */
    public record Nested(int blocksize, float offset) {
    }

    private final FourBitCode code;
    private final int blocksize;
    private final DType dtype;
    private final long[] shape;
    private final Nested nested;

    private QuantState(FourBitCode code, int blocksize, DType dtype, long[] shape, Nested nested) {
        this.code = code;
        this.blocksize = blocksize;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.nested = nested;
    }

    /** A new NF4 state; {@code nested} null for plain fp32 absmax. */
    public static QuantState of(int blocksize, DType dtype, long[] shape, Nested nested) {
        return of(FourBitCode.NF4, blocksize, dtype, shape, nested);
    }

    /** A new state of {@code code}'s quant type; {@code nested} null for plain fp32 absmax. */
    public static QuantState of(FourBitCode code, int blocksize, DType dtype, long[] shape, Nested nested) {
        if (!Nf4Codec.isValidBlocksize(blocksize)) {
            throw new IllegalArgumentException("blocksize " + blocksize + " is not a power of two from 32 to 4096");
        }
        if (!dtype.isMergeable()) {
            throw new IllegalArgumentException("dtype " + dtype + " cannot be quantized");
        }
        if (nested != null && (!Nf4Codec.isValidBlocksize(nested.blocksize()) || !Float.isFinite(nested.offset()))) {
            throw new IllegalArgumentException("invalid nested state " + nested);
        }
        if (shape.length == 0) {
            throw new IllegalArgumentException("a quantized weight has at least one dimension");
        }
        return new QuantState(code, blocksize, dtype, shape, nested);
    }

    /** The code book: {@code quant_type}. */
    public FourBitCode code() {
        return code;
    }

    /** The suffix after {@code P.weight} of this state's tensor: {@code .quant_state.bitsandbytes__<quant_type>}. */
    public String tensorSuffix() {
        return ".quant_state.bitsandbytes__" + code.typeName();
    }

    /** This state with another nesting (a requantized output's new offset). */
    public QuantState withNested(Nested newNested) {
        return of(code, blocksize, dtype, shape, newNested);
    }

    public int blocksize() {
        return blocksize;
    }

    /** The dtype the weight had and dequantizes to. */
    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    /** The nested fields, or null when absmax is stored as plain fp32. */
    public Nested nested() {
        return nested;
    }

    public boolean isDoubleQuant() {
        return nested != null;
    }

    public long numElements() {
        long n = 1;
        for (long d : shape) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    public long numBlocks() {
        return Nf4Codec.numBlocks(numElements(), blocksize);
    }

    /** bitsandbytes' spelling of a dtype in the quant state: {@code str(torch.bfloat16).strip("torch.")}. */
    static String torchName(DType dtype) {
        return dtype.torchName();
    }

    /**
     * The quant state bytes exactly as bitsandbytes writes them: Python's {@code json.dumps} with
     * its default separators, fields in {@code as_dict} order, the offset as {@code repr(float)}.
     */
    public byte[] toJson() {
        StringBuilder sb = new StringBuilder();
        sb.append("{\"quant_type\": \"").append(code.typeName()).append("\", \"blocksize\": ").append(blocksize)
                .append(", \"dtype\": \"").append(torchName(dtype)).append("\", \"shape\": [");
        for (int i = 0; i < shape.length; i++) {
            sb.append(i == 0 ? "" : ", ").append(shape[i]);
        }
        sb.append(']');
        if (nested != null) {
            sb.append(", \"nested_blocksize\": ").append(nested.blocksize())
                    .append(", \"nested_dtype\": \"float32\", \"nested_offset\": ")
                    .append(PythonFloat.repr(nested.offset()));
        }
        sb.append('}');
        return sb.toString().getBytes(StandardCharsets.UTF_8);
    }

    /**
     * The longest {@link #toJson} this state can have whatever its nested offset: the offset's
     * {@code repr} is at most 24 characters (sign, 17 digits, point, {@code e-XX}). A writer that
     * must reserve the quant state's room before the offset is known reserves this much.
     */
    public int maxJsonLength() {
        int len = toJson().length;
        if (nested == null) {
            return len;
        }
        return len - PythonFloat.repr(nested.offset()).length() + 24;
    }

    /**
     * Parses and validates the bytes of a quant state tensor. {@code path} and {@code tensor} name
     * the file and tensor in error messages.
     */
    public static QuantState parse(byte[] bytes, Path path, String tensor) throws QuantException {
        String text;
        try {
            text = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(bytes)).toString();
        } catch (CharacterCodingException e) {
            throw new QuantException(QUANT_STATE_NOT_JSON, path, tensor, "quant state is not UTF-8 text; the file is corrupt");
        }
        JsonNode root;
        try {
            root = JSON.readTree(text);
        } catch (JsonProcessingException e) {
            throw new QuantException(QUANT_STATE_NOT_JSON, path, tensor,
                    "quant state is not valid JSON (" + e.getOriginalMessage() + "); the file is corrupt");
        }
        if (root == null || !root.isObject()) {
            throw new QuantException(QUANT_STATE_NOT_JSON, path, tensor, "quant state is not a JSON object; the file is corrupt");
        }
        Set<String> known = new HashSet<>(PLAIN_FIELDS);
        known.addAll(NESTED_FIELDS);
        for (Iterator<String> it = root.fieldNames(); it.hasNext(); ) {
            String f = it.next();
            if (!known.contains(f)) {
                throw new QuantException(UNKNOWN_FIELD, path, tensor, "quant state has the field \"" + f
                        + "\", which bitsandbytes does not write (its QuantState.from_dict rejects it too); expected only "
                        + PLAIN_FIELDS + " and, when double-quantized, " + NESTED_FIELDS);
            }
        }
        for (String f : PLAIN_FIELDS) {
            if (!root.has(f)) {
                throw new QuantException(MISSING_FIELD, path, tensor, "quant state has no \"" + f + "\"; the file is truncated or was not written by bitsandbytes");
            }
        }
        String quantType = text(root, "quant_type", path, tensor);
        FourBitCode code = FourBitCode.of(quantType);
        if (code == null || (tensor != null && tensor.contains(".quant_state.bitsandbytes__")
                && !tensor.endsWith(".quant_state.bitsandbytes__" + quantType))) {
            throw new QuantException(UNSUPPORTED_QUANT_TYPE, path, tensor, "quant_type is \"" + quantType
                    + "\"; bitsandbytes' 4-bit weights are nf4 or fp4, named by their quant state tensor's suffix: the file is corrupt");
        }
        long blocksize = integer(root, "blocksize", path, tensor);
        if (!Nf4Codec.isValidBlocksize(blocksize)) {
            throw new QuantException(INVALID_BLOCKSIZE, path, tensor, "blocksize " + blocksize
                    + " is not one bitsandbytes' 4-bit kernels use (a power of two from 32 to 4096)");
        }
        String dtypeName = text(root, "dtype", path, tensor);
        DType dtype = parseTorchDtype(dtypeName);
        if (dtype == null) {
            throw new QuantException(UNSUPPORTED_DTYPE, path, tensor, "dtype \"" + dtypeName
                    + "\" is not one a 4-bit weight dequantizes to (bfloat16, float16 or float32)");
        }
        long[] shape = shape(root.get("shape"), path, tensor);
        int present = 0;
        for (String f : NESTED_FIELDS) {
            present += root.has(f) ? 1 : 0;
        }
        Nested nested = null;
        if (present == NESTED_FIELDS.size()) {
            nested = nested(root, path, tensor);
        } else if (present != 0) {
            List<String> missing = new ArrayList<>();
            for (String f : NESTED_FIELDS) {
                if (!root.has(f)) {
                    missing.add(f);
                }
            }
            throw new QuantException(INVALID_NESTED, path, tensor, "quant state has some double-quantization fields but not " + missing
                    + "; bitsandbytes writes all of " + NESTED_FIELDS + " or none");
        }
        return new QuantState(code, (int) blocksize, dtype, shape, nested);
    }

    private static Nested nested(JsonNode root, Path path, String tensor) throws QuantException {
        long nbs = integer(root, "nested_blocksize", path, tensor);
        if (!Nf4Codec.isValidBlocksize(nbs)) {
            throw new QuantException(INVALID_NESTED, path, tensor, "nested_blocksize " + nbs
                    + " is not a power of two from 32 to 4096 (bitsandbytes writes 256)");
        }
        String nestedDtype = text(root, "nested_dtype", path, tensor);
        if (!nestedDtype.equals("float32")) {
            throw new QuantException(INVALID_NESTED, path, tensor, "nested_dtype is \"" + nestedDtype
                    + "\"; double-quantized absmax values are float32 in every bitsandbytes release");
        }
        JsonNode off = root.get("nested_offset");
        if (!off.isNumber()) {
            throw new QuantException(WRONG_FIELD_TYPE, path, tensor, "nested_offset is " + off + ", not a number");
        }
        double offset = off.doubleValue();
        // bitsandbytes: torch.tensor(float(nested_offset)), an fp32 scalar
        float offset32 = (float) offset;
        if (!Float.isFinite(offset32)) {
            throw new QuantException(INVALID_NESTED, path, tensor, "nested_offset " + off + " is not a finite fp32 value; the file is corrupt");
        }
        return new Nested((int) nbs, offset32);
    }

    private static String text(JsonNode root, String field, Path path, String tensor) throws QuantException {
        JsonNode n = root.get(field);
        if (!n.isTextual()) {
            throw new QuantException(WRONG_FIELD_TYPE, path, tensor, field + " is " + n + ", not a string");
        }
        return n.textValue();
    }

    private static long integer(JsonNode root, String field, Path path, String tensor) throws QuantException {
        JsonNode n = root.get(field);
        if (!n.isIntegralNumber() || !n.canConvertToLong()) {
            throw new QuantException(WRONG_FIELD_TYPE, path, tensor, field + " is " + n + ", not an integer");
        }
        return n.longValue();
    }

    private static long[] shape(JsonNode n, Path path, String tensor) throws QuantException {
        if (!n.isArray()) {
            throw new QuantException(WRONG_FIELD_TYPE, path, tensor, "shape is " + n + ", not an array of integers");
        }
        if (n.size() == 0) {
            throw new QuantException(INVALID_SHAPE, path, tensor, "shape is [], but a 4-bit weight has at least one dimension");
        }
        long[] shape = new long[n.size()];
        long count = 1;
        for (int i = 0; i < shape.length; i++) {
            JsonNode d = n.get(i);
            if (!d.isIntegralNumber() || !d.canConvertToLong()) {
                throw new QuantException(WRONG_FIELD_TYPE, path, tensor, "shape holds " + d + ", not an integer");
            }
            shape[i] = d.longValue();
            if (shape[i] <= 0) {
                throw new QuantException(INVALID_SHAPE, path, tensor, "shape " + n + " has a dimension of " + shape[i]
                        + "; an empty weight is never quantized");
            }
            try {
                count = Math.multiplyExact(count, shape[i]);
            } catch (ArithmeticException e) {
                throw new QuantException(INVALID_SHAPE, path, tensor, "shape " + n + " overflows a 64-bit element count");
            }
        }
        return shape;
    }

    /** bfloat16, float16, float32 (bitsandbytes reads it with getattr(torch, name)); null for anything else. */
    static DType parseTorchDtype(String name) {
        switch (name) {
            case "bfloat16": return DType.BF16;
            case "float16": return DType.F16;
            case "float32": return DType.F32;
            default: return null;
        }
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof QuantState)) {
            return false;
        }
        QuantState q = (QuantState) o;
        return code == q.code && blocksize == q.blocksize && dtype == q.dtype && Arrays.equals(shape, q.shape) && Objects.equals(nested, q.nested);
    }

    @Override
    public int hashCode() {
        return Objects.hash(code, blocksize, dtype, Arrays.hashCode(shape), nested);
    }

    @Override
    public String toString() {
        return new String(toJson(), StandardCharsets.UTF_8);
    }
}
