package org.loramerge.batch;

import java.nio.file.Path;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;

/** A manifest that cannot run at all (exit 3): two lines with one output, an unreadable file, or problems under --strict. */
public final class ManifestException extends UserException {
    private static final long serialVersionUID = 1L;
    private final transient Path file;

    public ManifestException(Path file, String message) {
        super(message);
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
