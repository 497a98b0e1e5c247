package org.loramerge.errors;

/**
 * What kind of failure stopped a command, and the process exit code it maps to (the README's
 * table). Every failure a user can act on is a {@link UserException} of one of these kinds; an
 * exception of any other type is a bug (exit 1, with its trace).
 */
public enum ExitCode {
    OK(0),
    /** An unexpected error: a bug in loramerge. */
    INTERNAL(1),
    /** The command line asks for something that cannot be done as asked. */
    USAGE(2),
    /** An input is malformed, does not fit the other inputs, or uses a refused feature. */
    BAD_INPUT(3),
    /** The output could not be written: it exists, overlaps an input, or the disk failed. */
    OUTPUT(4),
    /** The merge produced infinities or NaN and --allow-overflow was not given. */
    NON_FINITE(5),
    /** verify (or merge --verify) found a problem. */
    VERIFY_FAILED(6),
    /** The requested GPU could not be used. */
    DEVICE(7);

    private final int code;

    ExitCode(int code) {
        this.code = code;
    }

    /** The process exit status. */
    public int code() {
        return code;
    }
}
