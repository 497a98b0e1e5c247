package org.loramerge.errors;

import java.io.IOException;

/**
 * The output could not be written (exit 4): it exists without --overwrite, overlaps an input, its
 * folder is missing or read-only, or the disk failed. Nothing was left behind.
 */
public final class OutputException extends UserException {
    private static final long serialVersionUID = 1L;

    public OutputException(String message) {
        super(message);
    }

    public OutputException(String message, IOException cause) {
        super(message, cause);
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.OUTPUT;
    }
}
