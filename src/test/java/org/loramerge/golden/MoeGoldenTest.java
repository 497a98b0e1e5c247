package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.ExactReference;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.FixtureCases;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Merges every golden MoE case (LoRA on expert parameters, made with PEFT 0.21 by
 * scripts/fixtures/make_moe_fixtures.py) and checks the output the way GoldenFixtureTest does:
 * the same tensors as the base, in the checkpoint's own form; changed exactly where PEFT changed
 * them; every adapted element the exact merge rounded once; and PEFT's value, which rounds ΔW to
 * bf16 before adding it (ParamWrapper.get_delta_weight, then param.data += ΔW), within PEFT's own
 * error bound of the exact one.
 */
class MoeGoldenTest {
    static final Path CASES = Paths.get("src/test/resources/moe");
    private static final List<String> REPORT = new ArrayList<>();

    @TempDir
    Path tmp;

    static Stream<String> cases() throws IOException {
        return FixtureCases.names(CASES);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void expertMergeIsExactAndWithinPeftsBoundInTheCheckpointsOwnForm(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        JsonNode info = new ObjectMapper().readTree(caseDir.resolve("case.json").toFile());
        Path out = tmp.resolve("out");
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            try (CpuBackend backend = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(out, false, List.of(caseDir))) {
                MergeRunner.run(plan, backend, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            Set<String> adapted = new TreeSet<>();
            for (OutputTensor t : plan.tensors()) {
                if (t.isAdapted()) {
                    adapted.add(t.name());
                }
            }
            Set<String> peftChanged = new TreeSet<>();
            info.path("checkpoint_tensors_changed_by_peft").fieldNames().forEachRemaining(peftChanged::add);
            assertEquals(peftChanged, adapted, name + ": the tensors the merge adapts are those PEFT changed");
            try (Checkpoint ours = Checkpoint.open(out); Checkpoint peft = Checkpoint.open(caseDir.resolve("peft"))) {
                assertEquals(new TreeSet<>(base.tensors().keySet()), new TreeSet<>(ours.tensors().keySet()), name + ": the base's own tensor names");
                compare(name, plan, ours, peft);
            }
        }
    }

    private void compare(String name, MergePlan plan, Checkpoint ours, Checkpoint peft) throws Exception {
        long elements = 0;
        long differ = 0;
        double maxUlp = 0;
        for (OutputTensor t : plan.tensors()) {
            TensorInfo mine = ours.tensor(t.name());
            TensorInfo theirs = peft.tensor(t.name());
            assertNotNull(theirs, name + ": PEFT's output has no " + t.name());
            assertEquals(TensorInfo.shapeString(theirs.shape()), TensorInfo.shapeString(mine.shape()), t.name() + " shape");
            assertEquals(theirs.dtype(), mine.dtype(), t.name() + " dtype");
            double[] oursV = GoldenFixtureTest.values(ours.fileOf(t.name()), mine);
            if (!t.isAdapted()) {
                double[] srcV = GoldenFixtureTest.values(t.source().file(), t.source().info());
                for (int k = 0; k < srcV.length; k++) {
                    assertEquals(Double.doubleToRawLongBits(srcV[k]), Double.doubleToRawLongBits(oursV[k]), t.name() + " is copied unchanged");
                }
                continue;
            }
            TensorJob job = TensorJob.prepare(t);
            FloatFormat fmt = FloatFormat.of(mine.dtype());
            double[] peftV = GoldenFixtureTest.values(peft.fileOf(t.name()), theirs);
            double[] srcV = GoldenFixtureTest.values(t.source().file(), t.source().info());
            int cols = job.cols();
            double[] row = new double[cols];
            for (long i = 0; i < job.rows(); i++) {
                System.arraycopy(srcV, (int) (i * cols), row, 0, cols);
                for (int j = 0; j < cols; j++) {
                    int idx = (int) (i * cols + j);
                    BigDecimal exact = ExactMath.merged(job, row, i, j);
                    if (ExactReference.roundBits(exact, mine.dtype()) != fmt.encode(oursV[idx])) {
                        fail(name + " " + t.name() + "[" + i + "," + j + "]: ours " + oursV[idx] + " is not the correctly rounded " + exact);
                    }
                    elements++;
                    double p = peftV[idx];
                    if (p != oursV[idx]) {
                        differ++;
                        maxUlp = Math.max(maxUlp, Math.abs(p - oursV[idx]) / fmt.ulp(oursV[idx]));
                        double tol = peftErrorBound(job, fmt, row[j], i, j, exact);
                        assertTrue(Math.abs(p - exact.doubleValue()) <= tol, name + " " + t.name() + "[" + i + "," + j + "]: PEFT " + p
                                + " is further than its own error bound " + tol + " from the exact " + exact);
                    }
                }
            }
        }
        assertTrue(elements > 0, name + ": nothing was adapted");
        REPORT.add(String.format(Locale.ROOT, "| %s | %d | %d | %.0f | 0 |", name, elements, differ, maxUlp));
    }

    /**
     * PEFT's distance from the exact value: half an ulp of the result, the fp32 error of its delta
     * ((r + 4)·2^-24·(|W| + Σ|s·U·V|)), and half a bf16 ulp of ΔW, which it rounds to the weight's
     * dtype before adding.
     */
    private static double peftErrorBound(TensorJob job, FloatFormat fmt, double w, long i, int j, BigDecimal exact) {
        double absSum = Math.abs(w);
        int rank = 0;
        for (LowRankTerm t : job.terms()) {
            int local = t.localRow(i);
            if (local < 0) {
                continue;
            }
            rank += t.rank();
            double s = 0;
            for (int k = 0; k < t.rank(); k++) {
                s += Math.abs(t.u()[local * t.rank() + k] * t.vt()[k * t.cols() + j]);
            }
            absSum += Math.abs(t.scale()) * s;
        }
        double delta = exact.doubleValue() - w;
        return fmt.ulp(exact.doubleValue()) + (rank + 4) * 0x1p-24 * absSum + 0.5 * fmt.ulp(delta);
    }

    @AfterAll
    static void writeReport() throws IOException {
        List<String> lines = new ArrayList<>();
        lines.add("| case | adapted elements | differ from PEFT | max ulp vs PEFT | ours not correctly rounded |");
        lines.add("| --- | --- | --- | --- | --- |");
        lines.addAll(REPORT.stream().sorted().toList());
        Files.createDirectories(Paths.get("target"));
        Files.write(Paths.get("target/moe-golden-report.md"), lines);
        lines.forEach(System.out::println);
    }
}
