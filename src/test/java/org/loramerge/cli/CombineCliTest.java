package org.loramerge.cli;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertAll;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Combining several adapters end to end ({@code merge --combine}, {@code combine}): each way the
 * adapters or the options can be wrong is bad input (exit 3) or a usage error (exit 2), with a
 * message that names what is wrong and says what to do, and nothing written; an adapter that
 * targets nothing the others target is combined and reported.
 */
class CombineCliTest {
    private static final Path ROOT = Paths.get("src/test/resources/combine");
    private static final Path LLAMA = ROOT.resolve("models/llama_f32");
    private static final Pattern REMEDY = Pattern.compile("(?i)\\b(use|give|merge|choose|add|check|re-?save|pass|remove)\\b");

    @TempDir
    Path dir;

    private record Result(int code, String err) {
    }

    private static Result run(List<String> args) {
        PrintStream oldErr = System.err;
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        try (PrintStream capture = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            System.setErr(capture);
            int code = Main.run(args.toArray(new String[0]));
            capture.flush();
            return new Result(code, err.toString(StandardCharsets.UTF_8));
        } finally {
            System.setErr(oldErr);
        }
    }

    private static String adapter(String name) {
        return ROOT.resolve("adapters").resolve(name).toString();
    }

    /** The command (merge or combine) with the base, these adapters and the extra options, into {@code out}. */
    private static List<String> command(String command, Path out, List<String> adapters, String... extra) {
        List<String> args = new ArrayList<>(List.of(command, "--base", LLAMA.toString(), "--out", out.toString()));
        if (command.equals("merge")) {
            args.addAll(List.of("--device", "cpu", "--quiet"));
        }
        for (String a : adapters) {
            args.addAll(List.of("--adapter", adapter(a)));
        }
        args.addAll(Arrays.asList(extra));
        return args;
    }

    /** The exit code, a message with {@code words} and a remedy, and no output folder (nor a partial one) beside {@code out}. */
    private static void assertRefused(int code, Result r, Path out, String... words) {
        assertAll(
                () -> assertEquals(code, r.code(), r::err),
                () -> assertFalse(Files.exists(out), out + " exists after a refused combination"),
                () -> assertEquals(List.of(), TinyModels.list(out.getParent()).stream().filter(n -> n.contains(".loramerge-")).toList(),
                        "leftover folders beside " + out),
                () -> assertTrue(REMEDY.matcher(r.err()).find(), () -> "stderr does not say what to do:\n" + r.err()),
                () -> {
                    for (String w : words) {
                        assertTrue(r.err().contains(w), "stderr does not mention " + w + ":\n" + r.err());
                    }
                });
    }

    @ParameterizedTest
    @ValueSource(strings = {"merge", "combine"})
    void adaptersOfAnotherBaseAreBadInputAndWriteNothing(String command) {
        Path out = dir.resolve("out");
        Result r = run(command(command, out, List.of("qv_r4", "gpt2_attn_r4"), "--combine", "cat"));
        assertRefused(ExitCodes.BAD_INPUT, r, out, adapter("gpt2_attn_r4"), "another model");
    }

    @ParameterizedTest
    @ValueSource(strings = {"merge", "combine"})
    void linearWithUnequalRanksIsBadInputAndWritesNothing(String command) {
        Path out = dir.resolve("out");
        Result r = run(command(command, out, List.of("qv_r4", "kv_r8"), "--combine", "linear"));
        assertRefused(ExitCodes.BAD_INPUT, r, out, "same rank", "rank 4", "rank 8", "v_proj");
    }

    @ParameterizedTest
    @ValueSource(strings = {"merge", "combine"})
    void aWeightCountThatDoesNotMatchTheAdaptersIsBadInputAndWritesNothing(String command) {
        Path out = dir.resolve("out");
        Result r = run(command(command, out, List.of("qv_r4", "qkvo_r4"), "--combine", "cat", "--weights", "0.5,0.3,0.2"));
        assertRefused(ExitCodes.BAD_INPUT, r, out, "3 weights for 2 adapters");
    }

    @ParameterizedTest
    @ValueSource(strings = {"0", "-0.5", "1.5", "NaN"})
    void aDensityOutsideZeroToOneIsBadInputAndWritesNothing(String density) {
        Path out = dir.resolve("out");
        Result r = run(command("merge", out, List.of("qv_r4", "qkvo_r4"), "--combine", "ties", "--density", density));
        assertRefused(ExitCodes.BAD_INPUT, r, out, "--density", "(0, 1]");
        Result c = run(command("combine", out, List.of("qv_r4", "qkvo_r4"), "--combine", "magnitude_prune", "--density", density));
        assertRefused(ExitCodes.BAD_INPUT, c, out, "--density", "(0, 1]");
    }

    @ParameterizedTest
    @ValueSource(strings = {"merge", "combine"})
    void doraAdaptersAreBadInputAndWriteNothing(String command) {
        Path out = dir.resolve("out");
        Result r = run(command(command, out, List.of("qv_r4", "dora_r4"), "--combine", "cat"));
        assertRefused(ExitCodes.BAD_INPUT, r, out, adapter("dora_r4"), "DoRA");
    }

    @Test
    void severalAdaptersWithoutCombineAreAUsageError() {
        Path out = dir.resolve("out");
        Result r = run(command("merge", out, List.of("qv_r4", "qkvo_r4")));
        assertRefused(ExitCodes.USAGE, r, out, "--combine");
    }

    @Test
    void anOptionTheMethodDoesNotTakeIsAUsageError() {
        Path out = dir.resolve("out");
        assertRefused(ExitCodes.USAGE, run(command("merge", out, List.of("qv_r4", "qkvo_r4"), "--combine", "cat", "--density", "0.5")), out,
                "--density does not apply to --combine cat");
        assertRefused(ExitCodes.USAGE, run(command("merge", out, List.of("qv_r4", "qkvo_r4"), "--combine", "ties")), out, "needs --density");
        assertRefused(ExitCodes.USAGE, run(command("combine", out, List.of("qv_r4", "qkvo_r4"), "--combine", "task_arithmetic")), out,
                "combine takes cat, linear");
    }

    @ParameterizedTest
    @ValueSource(strings = {"merge", "combine"})
    void anAdapterThatTargetsNothingTheOthersTargetIsCombinedAndReported(String command) throws Exception {
        Path out = dir.resolve("out");
        List<String> args = command(command, out, List.of("qv_r4", "mlp_r4"), "--combine", "cat");
        args.remove("--quiet");
        Result r = run(args);
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.err().contains("warning: adapter 1 (" + adapter("mlp_r4") + ") targets nothing any other adapter targets"), r.err());
        assertTrue(Files.isDirectory(out));
    }

    @ParameterizedTest
    @ValueSource(strings = {"ties_svd", "linear"})
    void combineWritesTheSameBytesWhateverTheThreadCount(String method) throws Exception {
        Path one = dir.resolve("one");
        Path three = dir.resolve("three");
        List<String> adapters = List.of("qv_r4", "qkvo_r4", "qv_r4b");
        String[] extra = method.equals("ties_svd") ? new String[] {"--combine", method, "--density", "0.5", "--rank", "3"}
                : new String[] {"--combine", method};
        List<String> a = command("combine", one, adapters, extra);
        a.addAll(List.of("--threads", "1", "--quiet"));
        List<String> b = command("combine", three, adapters, extra);
        b.addAll(List.of("--threads", "3", "--quiet"));
        Result ra = run(a);
        Result rb = run(b);
        assertEquals(ExitCodes.OK, ra.code(), ra.err());
        assertEquals(ExitCodes.OK, rb.code(), rb.err());
        assertEquals(TinyModels.hashTree(one), TinyModels.hashTree(three));
    }

    @Test
    void combineOnTheCpuSaysWhereItsSvdsRanAndAnUnknownDeviceIsAUsageError() throws Exception {
        Path out = dir.resolve("out");
        List<String> args = command("combine", out, List.of("qv_r4", "qkvo_r4", "qv_r4b"), "--combine", "ties_svd", "--density", "0.5",
                "--rank", "3", "--device", "cpu");
        Result r = run(args);
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.err().contains("SVDs on cpu ("), "the summary names the engine:\n" + r.err());
        Path bad = dir.resolve("bad");
        Result refused = run(command("combine", bad, List.of("qv_r4", "qkvo_r4"), "--combine", "ties_svd", "--density", "0.5",
                "--device", "tpu"));
        assertEquals(ExitCodes.USAGE, refused.code(), refused.err());
        assertTrue(refused.err().contains("--device tpu: expected auto, cpu, cuda or cuda:N"), refused.err());
        assertFalse(Files.exists(bad), "nothing written for a usage error");
    }

    @Test
    void combineWritesNothingOverAnExistingFolderWithoutOverwrite() throws Exception {
        Path out = Files.createDirectory(dir.resolve("out"));
        Files.writeString(out.resolve("keep.txt"), "mine");
        Result r = run(command("combine", out, List.of("qv_r4", "qkvo_r4"), "--combine", "cat"));
        assertEquals(ExitCodes.OUTPUT, r.code(), r.err());
        assertArrayEquals(new String[] {"keep.txt"}, TinyModels.list(out).toArray(new String[0]));
    }
}
