package org.loramerge.plan;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** A merged model that cannot be unmerged as asked (exit 3, nothing written); the message says why and what to pass. */
public final class UnmergeException extends UserException {
    private static final long serialVersionUID = 1L;

    /** Each way an unmerge can be refused. */
    public enum Reason {
        /** The merge overwrote or rescaled values that the merged model alone cannot give back (docs/FORMATS.md §11). */
        CANNOT_UNDO,
        /** The merged model has 4-bit weights: requantization rounded the change away. */
        QUANTIZED,
        /** --base does not fit the merged model. */
        BASE_MISMATCH
    }

    private final Reason reason;

    public UnmergeException(Reason reason, String message) {
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
