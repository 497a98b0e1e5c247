package org.loramerge.pipeline;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** A merge that produced values the user must decide about: overflow to infinity, or NaN (exit 5). */
public final class NonFiniteException extends UserException {
    private static final long serialVersionUID = 1L;

    NonFiniteException(String message) {
        super(message);
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.NON_FINITE;
    }
}
