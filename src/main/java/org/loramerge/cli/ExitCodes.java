package org.loramerge.cli;

/** Process exit codes; the README lists them. */
public final class ExitCodes {
    public static final int OK = 0;
    /** An unexpected error: a bug in loramerge. */
    public static final int INTERNAL = 1;
    /** Bad command-line usage. */
    public static final int USAGE = 2;
    /** A bad input: malformed safetensors, an adapter that does not fit the base, a refused feature. */
    public static final int BAD_INPUT = 3;
    /** The output could not be written (exists without --overwrite, disk full, permissions). */
    public static final int OUTPUT = 4;
    /** The merge produced infinities or NaN (F16 overflow) and --allow-overflow was not given. */
    public static final int NON_FINITE = 5;
    /** verify found a mismatch. */
    public static final int VERIFY_FAILED = 6;
    /** The requested GPU could not be used. */
    public static final int DEVICE = 7;

    private ExitCodes() {
    }
}
