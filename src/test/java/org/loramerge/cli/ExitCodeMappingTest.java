package org.loramerge.cli;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.loramerge.adapter.AdapterException;
import org.loramerge.errors.UsageException;
import org.loramerge.testutil.TinyModels;
import picocli.CommandLine;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Errors are typed: a user's mistake or a bad input carries its own exit code and prints one
 * line that says what to do; an internal invariant that breaks (a bug) is exit 1 with its trace,
 * even when it is an IllegalArgumentException.
 */
class ExitCodeMappingTest {
    @TempDir
    Path dir;

    private static String handled(Exception e, int expectedCode) {
        StringWriter text = new StringWriter();
        CommandLine cl = new CommandLine(new Main()).setErr(new PrintWriter(text));
        assertEquals(expectedCode, Main.handle(e, cl, false), e.toString());
        return text.toString();
    }

    @Test
    void anInternalIllegalArgumentIsABugWithItsTraceNotAUsageError() {
        String err = handled(new IllegalArgumentException("rows [0, +3) do not cover whole NF4 blocks"), ExitCodes.INTERNAL);
        assertTrue(err.contains("internal error") && err.contains("at org.loramerge.cli.ExitCodeMappingTest"), err);
    }

    @Test
    void anInternalIllegalStateIsABugWithItsTrace() {
        String err = handled(new IllegalStateException("adapter key x was not placed"), ExitCodes.INTERNAL);
        assertTrue(err.contains("please report it"), err);
    }

    @Test
    void typedUserErrorsCarryTheirOwnExitCodeAndPrintOneLine() {
        String usage = handled(new UsageException("--to nf4 merges into a bitsandbytes 4-bit base"), ExitCodes.USAGE);
        assertEquals(List.of("loramerge: --to nf4 merges into a bitsandbytes 4-bit base", "Run 'loramerge --help' for the options."),
                usage.strip().lines().toList());
        String bad = handled(new AdapterException(AdapterException.Reason.SHAPE_MISMATCH, Path.of("a"), "shape mismatch"), ExitCodes.BAD_INPUT);
        assertFalse(bad.contains("\tat "), bad);
    }

    @Test
    void anUntypedIoFailureIsTheOutputThatCouldNotBeWritten() {
        handled(new IOException("No space left on device"), ExitCodes.OUTPUT);
    }

    @ParameterizedTest
    @CsvSource({
            "--threads, 0, --threads 0: expected 1 or more",
            "--verify-rows, 0, --verify-rows 0: expected a positive number of rows",
            "--verify-rows, -5, --verify-rows -5: expected a positive number of rows",
            "--dtype, f64, --dtype f64: expected auto, f32, f16 or bf16",
            "--device, gpu, --device gpu: expected auto, cpu, cuda or cuda:N",
            "--device, cuda:x, --device cuda:x: expected cuda:N",
            "--max-shard-size, lots, --max-shard-size lots: expected a size",
            "--to, int4, --to int4: expected bf16, f16, f32 or nf4"})
    void badOptionValuesAreUsageErrorsThatNameTheOptionAndWriteNothing(String option, String value, String message) throws Exception {
        Path base = TinyModels.writeTinyLlama(dir.resolve("base"));
        Path adapter = TinyModels.writeQProjAdapter(dir.resolve("adapter"));
        Path out = dir.resolve("out");
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream old = System.err;
        int code;
        try {
            System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
            List<String> args = new ArrayList<>(List.of("merge", "--base", base.toString(), "--adapter", adapter.toString(),
                    "--out", out.toString(), "--quiet", option, value));
            if (!option.equals("--device")) {
                args.addAll(List.of("--device", "cpu"));
            }
            code = Main.run(args.toArray(new String[0]));
        } finally {
            System.setErr(old);
        }
        String text = err.toString(StandardCharsets.UTF_8);
        assertEquals(ExitCodes.USAGE, code, text);
        assertTrue(text.contains(message), text);
        assertFalse(text.contains("internal error"), text);
        assertFalse(Files.exists(out));
    }
}
