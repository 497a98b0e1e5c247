package org.loramerge.golden;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.math.BigDecimal;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.cli.Main;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.FixtureCases;

/**
 * The golden extract cases (scripts/fixtures/make_extract_fixtures.py): {@code extract} today
 * writes, byte for byte, the adapter that PEFT 0.21 loaded without a warning, and PEFT's
 * merge_and_unload() of it agrees with loramerge's merge of it (within one ulp where PEFT rounds
 * once, within PEFT's fp32 error bound where it does not).
 */
class ExtractFixtureTest {
    static final Path CASES = Paths.get("src/test/resources/extract");

    @TempDir
    Path tmp;

    static Stream<String> cases() throws Exception {
        return FixtureCases.names(CASES);
    }

    /** The recorded command, with its folders inside the case (and the output in a temporary folder). */
    private static String[] command(JsonNode info, Path caseDir, Path out) {
        String[] words = info.path("extract").path("command").asText().split(" ");
        List<String> args = new ArrayList<>();
        for (int i = 1; i < words.length; i++) { // words[0] is "loramerge"
            String w = words[i];
            String previous = args.isEmpty() ? "" : args.get(args.size() - 1);
            if (previous.equals("--base") || previous.equals("--tuned")) {
                w = caseDir.resolve(w).toString();
            } else if (previous.equals("--out")) {
                w = out.toString();
            }
            args.add(w);
        }
        args.addAll(List.of("--device", "cpu")); // the bytes pinned are the CPU engine's (the GPU's SVD rounds otherwise)
        return args.toArray(new String[0]);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void extractWritesTheAdapterPeftLoadedWithoutAWarning(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        JsonNode info = new ObjectMapper().readTree(caseDir.resolve("case.json").toFile());
        assertEquals(0, info.path("peft_load_warnings").size(), "PEFT warned while loading the extracted adapter: " + info.path("peft_load_warnings"));
        Path out = tmp.resolve("extracted");
        CliRun r = CliRun.of(() -> Main.run(command(info, caseDir, out)));
        assertEquals(0, r.code(), r::both);
        for (String f : List.of(LoraAdapter.CONFIG, LoraAdapter.WEIGHTS)) {
            assertArrayEquals(Files.readAllBytes(caseDir.resolve("extracted").resolve(f)), Files.readAllBytes(out.resolve(f)),
                    name + ": " + f + " differs from the one PEFT loaded; regenerate (scripts/fixtures/make_extract_fixtures.py) if the change is meant");
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void peftMergesTheExtractedAdapterAsLoramergeDoes(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        Path out = tmp.resolve("merged");
        int compared = 0;
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("extracted"));
             SafetensorsFile peft = SafetensorsFile.open(caseDir.resolve("peft_merged.safetensors"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(out, false, List.of(caseDir))) {
                MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Checkpoint ours = Checkpoint.open(out)) {
                for (OutputTensor t : plan.tensors()) {
                    TensorInfo theirs = peft.tensor(t.name());
                    if (theirs == null) {
                        assertTrue(t.isByteCopy(), name + ": PEFT left " + t.name() + " as in the base, loramerge changed it");
                        continue;
                    }
                    compared++;
                    TensorInfo mine = ours.tensor(t.name());
                    assertNotNull(mine, t.name());
                    double[] p = GoldenFixtureTest.values(peft, theirs);
                    double[] m = GoldenFixtureTest.values(ours.fileOf(t.name()), mine);
                    double[] src = GoldenFixtureTest.values(t.source().file(), t.source().info());
                    FloatFormat fmt = FloatFormat.of(mine.dtype());
                    TensorJob job = TensorJob.prepare(t);
                    int cols = job.cols();
                    for (int k = 0; k < m.length; k++) {
                        if (p[k] == m[k] || Math.abs(p[k] - m[k]) <= fmt.ulp(m[k])) {
                            continue;
                        }
                        long i = k / cols;
                        int j = k % cols;
                        double[] row = new double[cols];
                        System.arraycopy(src, (int) i * cols, row, 0, cols);
                        BigDecimal exact = ExactMath.merged(job, row, i, j);
                        double tol = GoldenFixtureTest.peftErrorBound(job, fmt, row[j], i, j, exact.doubleValue());
                        assertTrue(Math.abs(p[k] - exact.doubleValue()) <= tol, name + " " + t.name() + "[" + i + "," + j + "]: PEFT " + p[k]
                                + " is further than its own error bound " + tol + " from the exact " + exact);
                    }
                }
            }
        }
        assertTrue(compared > 0, name + ": PEFT's merge changed nothing");
    }
}
