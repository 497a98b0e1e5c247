package org.loramerge.engine;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.RoundingCases.Family;
import org.loramerge.testutil.RoundingCases.Fmt;
import org.loramerge.testutil.RoundingCases;

/**
 * Merges whose exact result lies on, or 2^-60 relative beside, a rounding boundary of the
 * output format, through the whole CPU pipeline, against {@link RoundingCases}' exact
 * reference. Many of them are built so that the fp64 value itself lands on the wrong side of
 * the boundary: only the error bound, by sending them to the exact fallback, gets them right.
 * The same adapter combined with itself by cat or task_arithmetic at weights 0.5 and 0.5 (two
 * terms a row, each half the delta) has the same exact result, and must round the same.
 */
class RoundingBoundaryTest {
    @TempDir
    Path dir;

    @ParameterizedTest(name = "{0}")
    @EnumSource(Fmt.class)
    void mergesNextToRoundingBoundariesAreCorrectlyRounded(Fmt fmt) throws Exception {
        List<Family> families = RoundingCases.families(fmt);
        Path base = dir.resolve("base");
        Path adapter = dir.resolve("adapter");
        RoundingCases.write(families, base, adapter);
        Path out = dir.resolve("out");
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(b, a, PlanOptions.defaults());
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
                // F16 65520 and above overflow: their infinity is the correct answer here
                MergeRunner.run(plan, cpu, o, new MergeRunner.Options(true, Backend.DEFAULT_BLOCK_BYTES), Progress.silent());
            }
        }
        RoundingCases.assertMatchesReference(families, out);
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Fmt.class)
    void anAdapterCombinedWithItselfAtHalfWeightsIsCorrectlyRoundedNextToBoundaries(Fmt fmt) throws Exception {
        List<Family> families = RoundingCases.families(fmt);
        Path base = dir.resolve("base");
        Path adapter = dir.resolve("adapter");
        RoundingCases.write(families, base, adapter);
        for (CombineMethod method : List.of(CombineMethod.CAT, CombineMethod.TASK_ARITHMETIC)) {
            Path out = dir.resolve("out-" + method.cliName());
            Combination how = Combination.of(method, 2, List.of(0.5, 0.5), 1.0, Combination.MajoritySign.TOTAL, 1.0, 0, 0, null);
            try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
                MergePlan plan = Planner.plan(b, List.of(a, a), PlanOptions.defaults(), how);
                try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
                    MergeRunner.run(plan, cpu, o, new MergeRunner.Options(true, Backend.DEFAULT_BLOCK_BYTES), Progress.silent());
                }
            }
            RoundingCases.assertMatchesReference(families, out);
        }
    }
}
