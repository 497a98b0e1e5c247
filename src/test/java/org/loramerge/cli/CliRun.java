package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertAll;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Pattern;
import org.loramerge.testutil.TinyModels;

/**
 * {@code loramerge} run in-process as a user runs it, with its exit code, stdout and stderr, and the
 * checks every failed command must pass: the exit code, a message that names the offending file and
 * says what to do, and no output folder (not even a hidden partial one).
 */
final class CliRun {
    /** Words of a message that tells the user what to do next (STYLE.md: every message says what to do next). */
    static final Pattern REMEDY = Pattern.compile(
            "(?i)\\b(download|copy|re-?save|re-?export|convert|fix|pass|use|choose|check|retry|replace|remove|regenerate|point|write|rewrite|simplify|scope|drop)\\b");

    record Result(int code, String out, String err) {
    }

    private CliRun() {
    }

    static Result run(String... args) {
        PrintStream oldOut = System.out;
        PrintStream oldErr = System.err;
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        try (PrintStream o = new PrintStream(out, true, StandardCharsets.UTF_8); PrintStream e = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            System.setOut(o);
            System.setErr(e);
            int code = Main.run(args);
            return new Result(code, out.toString(StandardCharsets.UTF_8), err.toString(StandardCharsets.UTF_8));
        } finally {
            System.setOut(oldOut);
            System.setErr(oldErr);
        }
    }

    /** {@code merge} on the CPU, quiet, with {@code extra} options. */
    static Result merge(Path base, Path adapter, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", base.toString(), "--adapter", adapter.toString(),
                "--out", out.toString(), "--device", "cpu", "--quiet"));
        args.addAll(Arrays.asList(extra));
        return run(args.toArray(new String[0]));
    }

    static Result verify(Path base, Path adapter, Path merged, String... extra) {
        List<String> args = new ArrayList<>(List.of("verify", "--base", base.toString(), "--adapter", adapter.toString(),
                "--merged", merged.toString()));
        args.addAll(Arrays.asList(extra));
        return run(args.toArray(new String[0]));
    }

    /** Exit code 3 and a message that names {@code offending} and says what to do. */
    static void assertBadInput(Result r, Object offending) {
        assertAll(
                () -> assertEquals(ExitCodes.BAD_INPUT, r.code(), r::err),
                () -> assertTrue(r.err().contains(offending.toString()), () -> "stderr does not name " + offending + ":\n" + r.err()),
                () -> assertTrue(REMEDY.matcher(r.err()).find(), () -> "stderr does not say what to do:\n" + r.err()),
                () -> assertFalse(r.err().contains("internal error"), r::err));
    }

    /** {@link #assertBadInput(Result, Object)}, and neither {@code out} nor a partial folder beside it exists. */
    static void assertBadInput(Result r, Path out, Object offending) {
        assertBadInput(r, offending);
        assertNoOutput(out);
    }

    static void assertNoOutput(Path out) {
        assertFalse(Files.exists(out), out + " exists after a failed merge");
        assertNoLeftovers(out);
    }

    /** No hidden {@code .NAME.loramerge-partial-*} or {@code .NAME.loramerge-old-*} folder beside {@code out}. */
    static void assertNoLeftovers(Path out) {
        List<String> left = TinyModels.list(out.getParent()).stream().filter(n -> n.contains(".loramerge-")).toList();
        assertEquals(List.of(), left, "leftover folders beside " + out);
    }
}
