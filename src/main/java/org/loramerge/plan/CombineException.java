package org.loramerge.plan;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/**
 * Several adapters that cannot be combined as asked (exit 3): the message names the adapter, the
 * module or the option, and says what to do. Nothing has been written when it is thrown.
 */
public final class CombineException extends UserException {
    private static final long serialVersionUID = 1L;

    /** What is wrong. */
    public enum Reason {
        /** --weights does not give one weight per adapter, or a weight is not a finite number. */
        WEIGHTS,
        /** --density outside (0, 1], --rank below 1, --svd-clamp outside [0, 1], --lambda not finite. */
        PARAMETER,
        /** A method that needs equal ranks (PEFT's linear, ties, dare_*, magnitude_prune on the factors) got different ones. */
        UNEQUAL_RANKS,
        /** An adapter uses something the method cannot combine (DoRA magnitudes, lora_bias, token rows, replaced tensors). */
        UNSUPPORTED
    }

    private final Reason reason;

    public CombineException(Reason reason, String message) {
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
