package org.loramerge.plan;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/**
 * A base and a fine-tuned model that no adapter can be extracted from (exit 3, nothing written):
 * the message names the models, the tensors and what to pass instead.
 */
public final class ExtractException extends UserException {
    private static final long serialVersionUID = 1L;

    /** Each way the pair can be unfit. */
    public enum Reason {
        /** The two models hold different tensor names. */
        TENSOR_SETS,
        /** config.json names different architectures. */
        ARCHITECTURE,
        /** A tensor has different shapes in the two (other than a resized vocabulary). */
        SHAPE,
        /** A tensor is floating point in one model and not in the other. */
        DTYPE,
        /** A NaN or infinite value in either model. */
        NON_FINITE,
        /** Every tensor is equal: there is nothing to extract. */
        IDENTICAL,
        /** A 4-bit (quantized) checkpoint, whose weights are not the dense values a difference needs. */
        QUANTIZED
    }

    private final Reason reason;

    public ExtractException(Reason reason, String message) {
        super(message + " [" + reason + "]");
        this.reason = reason;
    }

    public Reason reason() {
        return reason;
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.BAD_INPUT;
    }
}
