package org.loramerge.api;

import java.nio.file.Path;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** An input folder that cannot be opened as what it should be (exit 3); the message names it and the fix. */
public final class InputException extends UserException {
    private static final long serialVersionUID = 1L;
    private final Path file;

    InputException(Path file, String message, Throwable cause) {
        super(message, cause);
        this.file = file;
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.BAD_INPUT;
    }

    @Override
    public Path file() {
        return file;
    }
}
