package org.loramerge.errors;

/** The command line asks for something that cannot be done as asked (exit 2): the message says what to ask instead. */
public final class UsageException extends UserException {
    private static final long serialVersionUID = 1L;

    public UsageException(String message) {
        super(message);
    }

    @Override
    public ExitCode exitCode() {
        return ExitCode.USAGE;
    }
}
