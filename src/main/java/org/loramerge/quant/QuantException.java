package org.loramerge.quant;

import java.nio.file.Path;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;
import org.loramerge.format.SafetensorsException;

/**
 * A bitsandbytes 4-bit checkpoint (or a weight to quantize) that loramerge cannot use. Each reason
 * is one way the input can be bad or unsupported; the quant-state reasons mirror what
 * bitsandbytes' {@code QuantState.from_dict} accepts (bitsandbytes functional.py), the group
 * reasons what transformers' 4-bit loader expects (transformers quantizers/quantizer_bnb_4bit.py).
 */
public final class QuantException extends UserException {
    private static final long serialVersionUID = 1L;

    public enum Reason {
        /** The quant state tensor is not a UTF-8 JSON object (or names a key twice). */
        QUANT_STATE_NOT_JSON,
        /** A field bitsandbytes always writes is missing from the quant state. */
        MISSING_FIELD,
        /** The quant state has a field bitsandbytes does not know (its from_dict rejects it too). */
        UNKNOWN_FIELD,
        /** A quant state field has the wrong JSON type (a string for a number, ...). */
        WRONG_FIELD_TYPE,
        /** quant_type is not nf4 (fp4 is a different code book, refused). */
        UNSUPPORTED_QUANT_TYPE,
        /** blocksize is not a power of two from 32 to 4096. */
        INVALID_BLOCKSIZE,
        /** dtype is not bfloat16, float16 or float32. */
        UNSUPPORTED_DTYPE,
        /** shape is empty, has a negative or zero dimension, or overflows. */
        INVALID_SHAPE,
        /** The nested (double-quantization) fields are incomplete or invalid. */
        INVALID_NESTED,
        /** A tensor of the quantized weight's group is missing. */
        MISSING_TENSOR,
        /** A tensor of the group has a dtype or shape that does not fit the quant state. */
        TENSOR_MISMATCH,
        /** config.json's quantization_config is malformed. */
        INVALID_CONFIG,
        /** config.json asks for a quantization loramerge does not handle (fp4, 8-bit, another method, packed storage). */
        UNSUPPORTED_CONFIG,
        /** A weight to quantize holds NaN or an infinity. */
        NON_FINITE,
        /** The input is already quantized, or another state that refuses the requested operation. */
        ALREADY_QUANTIZED
    }

    private final Reason reason;
    private final Path path;
    private final String tensor;

    public QuantException(Reason reason, Path path, String tensor, String detail) {
        super(SafetensorsException.format(reason, path, tensor, detail));
        this.reason = reason;
        this.path = path;
        this.tensor = tensor;
    }

    public Reason reason() {
        return reason;
    }

    public Path path() {
        return path;
    }

    @Override
    public Path file() {
        return path;
    }

    public String tensor() {
        return tensor;
    }

    /** A bad input file: exit 3. */
    @Override
    public ExitCode exitCode() {
        return ExitCode.BAD_INPUT;
    }
}
