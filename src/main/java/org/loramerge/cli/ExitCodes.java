package org.loramerge.cli;

import org.loramerge.errors.ExitCode;

/** The process exit statuses of {@link ExitCode}, as the ints commands return; the README lists them. */
public final class ExitCodes {
    public static final int OK = ExitCode.OK.code();
    public static final int INTERNAL = ExitCode.INTERNAL.code();
    public static final int USAGE = ExitCode.USAGE.code();
    public static final int BAD_INPUT = ExitCode.BAD_INPUT.code();
    public static final int OUTPUT = ExitCode.OUTPUT.code();
    public static final int NON_FINITE = ExitCode.NON_FINITE.code();
    public static final int VERIFY_FAILED = ExitCode.VERIFY_FAILED.code();
    public static final int DEVICE = ExitCode.DEVICE.code();

    private ExitCodes() {
    }
}
