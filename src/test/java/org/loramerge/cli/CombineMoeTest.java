package org.loramerge.cli;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.FixtureCases;

import static org.junit.jupiter.api.Assertions.assertAll;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Several adapters with LoRA on MoE expert parameters (the golden MoE cases of
 * src/test/resources/moe): {@code cat} and {@code task_arithmetic} add every expert's terms
 * exactly, so an adapter combined with itself at weights 0.5 and 0.5 writes the bytes of its own
 * merge; the methods that combine factors or dense deltas, and {@code combine}'s new adapter,
 * cannot take the experts' fused factors and refuse them (exit 3) with nothing written.
 */
class CombineMoeTest {
    private static final Path MOE = Paths.get("src/test/resources/moe");

    @TempDir
    Path dir;

    static Stream<String> cases() throws Exception {
        return FixtureCases.names(MOE);
    }

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

    private static List<String> merge(Path caseDir, Path out, int copies, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", caseDir.resolve("base").toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet"));
        for (int i = 0; i < copies; i++) {
            args.addAll(List.of("--adapter", caseDir.resolve("adapter").toString()));
        }
        args.addAll(List.of(extra));
        return args;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void anExpertAdapterCombinedWithItselfAtHalfWeightsWritesItsOwnMerge(String name) throws Exception {
        Path caseDir = MOE.resolve(name);
        Path single = dir.resolve("single");
        Path combined = dir.resolve("combined");
        Result one = run(merge(caseDir, single, 1));
        assertEquals(0, one.code(), one::err);
        for (String method : List.of("cat", "task_arithmetic")) {
            Result two = run(merge(caseDir, combined, 2, "--combine", method, "--weights", "0.5,0.5", "--overwrite"));
            assertEquals(0, two.code(), two::err);
            try (Stream<Path> files = Files.list(single)) {
                for (Path p : files.toList()) {
                    if (p.getFileName().toString().equals("README.md")) {
                        // the model card names the method and both adapters; every other file is the single merge's
                        assertTrue(Files.readString(combined.resolve("README.md")).contains(method), name + ", " + method + ": the model card names the combination");
                        continue;
                    }
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(combined.resolve(p.getFileName())),
                            name + ", " + method + ": " + p.getFileName());
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"linear", "ties", "dare_linear", "magnitude_prune", "svd"})
    void methodsOtherThanCatAndTaskArithmeticRefuseExpertParameters(String method) {
        Path out = dir.resolve("out");
        List<String> density = method.equals("linear") || method.equals("svd") ? List.of() : List.of("--density", "0.5");
        Result r = run(merge(MOE.resolve("mixtral_experts"), out, 2, concat(List.of("--combine", method), density)));
        assertRefused(r, out, "target_parameters", "cat", "task_arithmetic");
    }

    @ParameterizedTest
    @ValueSource(strings = {"cat", "ties"})
    void combineRefusesExpertParametersForTheNewAdapter(String method) {
        Path caseDir = MOE.resolve("qwen3_moe_experts");
        Path out = dir.resolve("out");
        List<String> args = new ArrayList<>(List.of("combine", "--base", caseDir.resolve("base").toString(), "--out", out.toString(), "--adapter",
                caseDir.resolve("adapter").toString(), "--adapter", caseDir.resolve("adapter").toString(), "--combine", method));
        if (method.equals("ties")) {
            args.addAll(List.of("--density", "1"));
        }
        Result r = run(args);
        assertRefused(r, out, "target_parameters", "merge --combine cat");
    }

    private static String[] concat(List<String> a, List<String> b) {
        List<String> all = new ArrayList<>(a);
        all.addAll(b);
        return all.toArray(new String[0]);
    }

    private static void assertRefused(Result r, Path out, String... words) {
        assertAll(
                () -> assertEquals(ExitCodes.BAD_INPUT, r.code(), r::err),
                () -> assertFalse(Files.exists(out), out + " exists after a refused combination"),
                () -> assertEquals(List.of(), TinyModels.list(out.getParent()).stream().filter(n -> n.contains(".loramerge-")).toList(),
                        "leftover folders beside " + out),
                () -> {
                    for (String w : words) {
                        assertTrue(r.err().contains(w), "stderr does not mention " + w + ":\n" + r.err());
                    }
                });
    }
}
