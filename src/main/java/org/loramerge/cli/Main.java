package org.loramerge.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.Supplier;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UsageException;
import org.loramerge.errors.UserException;
import org.loramerge.format.ToolVersion;
import picocli.AutoComplete;
import picocli.CommandLine.Command;
import picocli.CommandLine;

/** The {@code loramerge} command. The only place that turns failures into exit codes. */
@Command(name = "loramerge",
        mixinStandardHelpOptions = true,
        versionProvider = Main.Version.class,
        description = {
                "Merges PEFT LoRA adapters into Hugging Face safetensors checkpoints: W' = W + s·B·A, "
                        + "correctly rounded, streamed tensor by tensor, on the CPU or an NVIDIA GPU."},
        footer = {"", "Exit codes: 0 ok, 2 usage, 3 bad input, 4 output not written, 5 overflow/NaN, 6 verify failed, 7 GPU unavailable, 1 bug."})
public final class Main {
    /**
     * The commands that run alone, by name, in the order the help lists them: a command line that
     * starts with one of these names gets a tree of that command only ({@link #commandLine(String...)}),
     * since picocli builds the options of every command it is given: the whole tree took about 200 ms
     * of every run's start on the H200 machine, the command alone about 60 ms less
     * (benchmarks/RESULTS.md, 2026-12-01, start-up).
     */
    private static final Map<String, Supplier<Object>> ALONE = aloneCommands();

    /** The commands of the whole tree only, listed after the others: help, the completion script and the man page need the whole tree. */
    private static final List<Supplier<Object>> WHOLE_TREE_ONLY = List.of(CommandLine.HelpCommand::new, AutoComplete.GenerateCompletion::new,
            ManPageCommand::new);

    private static Map<String, Supplier<Object>> aloneCommands() {
        Map<String, Supplier<Object>> m = new LinkedHashMap<>();
        m.put("merge", MergeCommand::new);
        m.put("combine", CombineCommand::new);
        m.put("batch", BatchCommand::new);
        m.put("verify", VerifyCommand::new);
        m.put("inspect", InspectCommand::new);
        m.put("quantize", QuantizeCommand::new);
        m.put("extract", ExtractCommand::new);
        m.put("unmerge", UnmergeCommand::new);
        return Collections.unmodifiableMap(m);
    }

    public static void main(String[] args) {
        Thread driver = prestartEngine(args);
        int code = run(args);
        if (driver != null) {
            // a run that ended early (a usage error, a missing file) leaves the driver's start to
            // finish before the exit tears CUDA down
            try {
                driver.join(10_000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        System.exit(code);
    }

    /** The commands with a --device option (default auto). */
    private static final Set<String> ENGINE_COMMANDS = Set.of("merge", "combine", "extract", "unmerge");

    /**
     * For a command that opens an engine, starts the GPU driver first thing ({@link Backends#prestart}):
     * it takes about half a second, which then passes while the command line is parsed and the plan
     * made instead of after them. A look at the words only, before picocli parses them: the command
     * (the first word), and {@code --device X} or {@code --device=X} (default auto); nothing for
     * {@code cpu}, help or version. What it gets wrong costs nothing but a driver started in vain:
     * the parsed options decide the engine.
     */
    static Thread prestartEngine(String[] args) {
        String device = prestartDevice(args);
        return device == null ? null : Backends.prestart(device);
    }

    /** The --device of {@link #prestartEngine}'s look at {@code args}, or null where it starts nothing. */
    static String prestartDevice(String[] args) {
        if (args.length == 0 || !ENGINE_COMMANDS.contains(args[0])) {
            return null;
        }
        String device = "auto";
        for (int i = 1; i < args.length; i++) {
            String a = args[i];
            if (a.equals("-h") || a.equals("--help") || a.equals("-V") || a.equals("--version")) {
                return null;
            }
            if (a.equals("--device") && i + 1 < args.length) {
                device = args[++i];
            } else if (a.startsWith("--device=")) {
                device = a.substring("--device=".length());
            }
        }
        return device.equalsIgnoreCase("cpu") ? null : device;
    }

    /** Runs the command line and returns the exit code (tests call this). */
    public static int run(String... args) {
        CommandLine cl = commandLine(args);
        boolean json = Arrays.asList(args).contains("--json");
        cl.setExecutionExceptionHandler((e, line, parsed) -> handle(e, line, json));
        cl.setParameterExceptionHandler((e, a) -> usage(e.getCommandLine(), e.getMessage(), json, null));
        return cl.execute(args);
    }

    /** The whole command tree, for help and for the completion script and man page generators. */
    static CommandLine commandLine() {
        CommandLine cl = new CommandLine(new Main());
        for (Supplier<Object> c : ALONE.values()) {
            cl.addSubcommand(c.get());
        }
        for (Supplier<Object> c : WHOLE_TREE_ONLY) {
            cl.addSubcommand(c.get());
        }
        // the completion generator is for the install script, not a command users type
        cl.getSubcommands().get("generate-completion").getCommandSpec().usageMessage().hidden(true);
        return cl;
    }

    /** The tree that runs {@code args}: the command they name alone ({@link #ALONE}), else the whole tree. */
    static CommandLine commandLine(String... args) {
        Supplier<Object> alone = args.length > 0 ? ALONE.get(args[0]) : null;
        if (alone == null) {
            return commandLine();
        }
        CommandLine cl = new CommandLine(new Main());
        cl.addSubcommand(alone.get());
        return cl;
    }

    /**
     * Maps a failure to its exit code: a {@link UserException} carries its own and prints its
     * message (a usage error adds where to find the options); an I/O failure that no layer typed is
     * the output that could not be written; anything else is a bug, printed with its trace. Under
     * {@code --json} stdout gets the error as a JSON object too.
     */
    static int handle(Exception e, CommandLine cl, boolean json) {
        if (e instanceof UsageException) {
            return usage(cl, e.getMessage(), json, null);
        }
        PrintWriter err = cl.getErr();
        ExitCode code;
        String message = e.getMessage();
        Path file = null;
        if (e instanceof UserException) {
            code = ((UserException) e).exitCode();
            file = ((UserException) e).file();
        } else if (e instanceof FileAlreadyExistsException) {
            code = ExitCode.OUTPUT;
            message = ((FileAlreadyExistsException) e).getFile() + ": " + ((FileAlreadyExistsException) e).getReason();
            file = Paths.get(((FileAlreadyExistsException) e).getFile());
        } else if (e instanceof IOException) {
            code = ExitCode.OUTPUT;
        } else {
            err.println("loramerge: internal error, please report it with the command line and this trace:");
            e.printStackTrace(err);
            err.flush();
            if (json) {
                CliJson.error(System.out, ExitCode.INTERNAL, "internal error: " + e, null);
            }
            return ExitCode.INTERNAL.code();
        }
        err.println("loramerge: " + message);
        err.flush();
        if (json) {
            CliJson.error(System.out, code, message, file);
        }
        return code.code();
    }

    /** A usage error: the message and one line saying where the options are, not the whole help. */
    private static int usage(CommandLine cl, String message, boolean json, Path file) {
        PrintWriter err = cl.getErr();
        err.println("loramerge: " + message);
        err.println("Run '" + cl.getCommandSpec().qualifiedName() + " --help' for the options.");
        err.flush();
        if (json) {
            CliJson.error(System.out, ExitCode.USAGE, message, file);
        }
        return ExitCode.USAGE.code();
    }

    /** The version from the jar's manifest (Implementation-Version), or from the build outside a jar. */
    static final class Version implements CommandLine.IVersionProvider {
        @Override
        public String[] getVersion() {
            return new String[] {"loramerge " + ToolVersion.get()};
        }
    }
}
