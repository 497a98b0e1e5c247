package org.loramerge.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.FileAlreadyExistsException;
import org.loramerge.errors.UserException;
import picocli.CommandLine.Command;
import picocli.CommandLine;

/** The {@code loramerge} command. The only place that turns failures into exit codes. */
@Command(name = "loramerge",
        mixinStandardHelpOptions = true,
        versionProvider = Main.Version.class,
        description = {
                "Merges PEFT LoRA adapters into Hugging Face safetensors checkpoints: W' = W + s·B·A, "
                        + "correctly rounded, streamed tensor by tensor, on the CPU or an NVIDIA GPU."},
        subcommands = {MergeCommand.class, CombineCommand.class, VerifyCommand.class, InspectCommand.class, QuantizeCommand.class, CommandLine.HelpCommand.class},
        footer = {"", "Exit codes: 0 ok, 2 usage, 3 bad input, 4 output not written, 5 overflow/NaN, 6 verify failed, 7 GPU unavailable, 1 bug."})
public final class Main {
    public static void main(String[] args) {
        System.exit(run(args));
    }

    /** Runs the command line and returns the exit code (tests call this). */
    public static int run(String... args) {
        CommandLine cl = new CommandLine(new Main());
        cl.setExecutionExceptionHandler(Main::handle);
        return cl.execute(args);
    }

    /**
     * Maps a failure to its exit code: a {@link UserException} carries its own and prints its
     * message; an I/O failure that no layer typed is the output that could not be written; anything
     * else is a bug, printed with its trace.
     */
    static int handle(Exception e, CommandLine cl, CommandLine.ParseResult parsed) {
        PrintWriter err = cl.getErr();
        int code;
        String message = e.getMessage();
        if (e instanceof UserException) {
            code = ((UserException) e).exitCode().code();
        } else if (e instanceof FileAlreadyExistsException) {
            code = ExitCodes.OUTPUT;
            message = ((FileAlreadyExistsException) e).getFile() + ": " + ((FileAlreadyExistsException) e).getReason();
        } else if (e instanceof IOException) {
            code = ExitCodes.OUTPUT;
        } else {
            code = ExitCodes.INTERNAL;
            err.println("loramerge: internal error, please report it with the command line and this trace:");
            e.printStackTrace(err);
            err.flush();
            return code;
        }
        err.println("loramerge: " + message);
        err.flush();
        return code;
    }

    /** The version from the jar's manifest. */
    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            String v = Main.class.getPackage().getImplementationVersion();
            return new String[] {"loramerge " + (v == null ? "dev" : v)};
        }
    }
}
