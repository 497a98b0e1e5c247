package org.loramerge.cli;

import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** A failure found by a command itself (an input folder that cannot be opened, ...), with the kind it is. */
final class CliException extends UserException {
    private static final long serialVersionUID = 1L;
    private final ExitCode exitCode;

    CliException(ExitCode exitCode, String message, Throwable cause) {
        super(message, cause);
        this.exitCode = exitCode;
    }

    @Override
    public ExitCode exitCode() {
        return exitCode;
    }
}
