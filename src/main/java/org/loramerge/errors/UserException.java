package org.loramerge.errors;

import java.nio.file.Path;

/**
 * A failure the user can act on: its message says what went wrong, where, and what to do next,
 * and its {@link #exitCode()} says which kind it is. The command line prints the message alone,
 * without a trace. Each package has its own subclasses for its inputs (a malformed safetensors
 * file, an adapter that does not fit, a device that cannot be used); anything that is not a
 * UserException is a bug.
 */
public abstract class UserException extends Exception {
    private static final long serialVersionUID = 1L;

    protected UserException(String message) {
        super(message);
    }

    protected UserException(String message, Throwable cause) {
        super(message, cause);
    }

    /** The kind of failure, and so the exit status. */
    public abstract ExitCode exitCode();

    /** The file or folder the failure is about, when one is known (the {@code file} of a {@code --json} error); else null. */
    public Path file() {
        return null;
    }
}
