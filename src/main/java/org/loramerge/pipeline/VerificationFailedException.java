package org.loramerge.pipeline;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** The finished output failed its own verification ({@code merge --verify}); it was not renamed into place (exit 6). */
public final class VerificationFailedException extends UserException {
    private static final long serialVersionUID = 1L;

    VerificationFailedException(String message) {
        super(message);
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.VERIFY_FAILED;
    }
}
