package org.loramerge.errors;

import java.io.IOException;
import java.nio.file.Path;

/**
 * The output could not be written (exit 4): it exists without --overwrite, overlaps an input, its
 * folder is missing or read-only, or the disk failed. Nothing was left behind.
 */
public final class OutputException extends UserException {
    private static final long serialVersionUID = 1L;

    private final Path file;

    public OutputException(String message) {
        this(null, message, null);
    }

    public OutputException(String message, IOException cause) {
        this(null, message, cause);
    }

    /** An output failure about {@code file} (the output folder, or the file that could not be written). */
    public OutputException(Path file, String message, IOException cause) {
        super(message, cause);
        this.file = file;
    }

    @Override
    public Path file() {
        return file;
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.OUTPUT;
    }
}
