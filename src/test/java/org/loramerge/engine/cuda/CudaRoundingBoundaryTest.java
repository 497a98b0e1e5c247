package org.loramerge.engine.cuda;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.RoundingCases.Family;
import org.loramerge.testutil.RoundingCases.Fmt;
import org.loramerge.testutil.RoundingCases;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The merges of {@code RoundingBoundaryTest} (on, or 2^-60 relative beside, rounding boundaries;
 * fp64 sums that land across them) through the CUDA engine: the kernel's bound must send the
 * undecidable elements to the host's exact fallback, so the bytes are the exact reference's, as
 * the CPU engine's are; and the same adapter combined with itself by cat at weights whose scaled
 * factors round (folded into one term on the device, whose elements at a boundary the host
 * settles from the adapters' own terms), byte for byte the CPU engine's. Skips itself where there
 * is no usable GPU.
 */
@Tag("gpu")
class CudaRoundingBoundaryTest {
    private static Backend cuda;

    @TempDir
    Path dir;

    @BeforeEach
    void openDevice() {
        if (cuda == null) {
            cuda = GpuTests.openOrSkip();
        }
    }

    @AfterAll
    static void closeDevice() {
        if (cuda != null) {
            cuda.close();
        }
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Fmt.class)
    void gpuMergesNextToRoundingBoundariesAreCorrectlyRounded(Fmt fmt) throws Exception {
        List<Family> families = RoundingCases.families(fmt);
        Path base = dir.resolve("base");
        Path adapter = dir.resolve("adapter");
        RoundingCases.write(families, base, adapter);
        Path out = dir.resolve("out");
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(b, a, PlanOptions.defaults());
            for (OutputTensor t : plan.tensors()) {
                if (t.isAdapted()) {
                    assertTrue(CudaBackend.onGpu(TensorJob.prepare(t)), t.name() + " would not be merged on the GPU");
                }
            }
            try (AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
                MergeRunner.run(plan, cuda, o, new MergeRunner.Options(true, Backend.DEFAULT_BLOCK_BYTES), Progress.silent());
            }
        }
        RoundingCases.assertMatchesReference(families, out);
    }

    @ParameterizedTest(name = "{0}")
    @EnumSource(Fmt.class)
    void foldedCombinationsNextToRoundingBoundariesAreTheCpuEnginesBytes(Fmt fmt) throws Exception {
        List<Family> families = RoundingCases.families(fmt);
        Path base = dir.resolve("base");
        Path adapter = dir.resolve("adapter");
        RoundingCases.write(families, base, adapter);
        // fl(1/3) and fl(2/3) times each scale: the folded s·U are rounded, and the exact sum is not the single merge's
        Combination how = Combination.of(CombineMethod.CAT, 2, List.of(1.0 / 3, 2.0 / 3), 1.0, Combination.MajoritySign.TOTAL, 1.0, 0, 0, null);
        Path cpuOut = dir.resolve("cpu");
        Path gpuOut = dir.resolve("gpu");
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(b, List.of(a, a), PlanOptions.defaults(), how);
            for (OutputTensor t : plan.tensors()) {
                if (t.isAdapted()) {
                    assertTrue(CudaBackend.onGpu(TensorJob.prepare(t)), t.name() + " would not be merged on the GPU");
                }
            }
            MergeReport onCpu;
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(base, adapter))) {
                onCpu = MergeRunner.run(plan, cpu, o, new MergeRunner.Options(true, Backend.DEFAULT_BLOCK_BYTES), Progress.silent());
            }
            assertTrue(onCpu.tensors.stream().mapToLong(MergeReport.TensorOutcome::exactlyRounded).sum() > 0,
                    "some elements lie at a rounding boundary: the test reaches the host's settling");
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(base, adapter))) {
                MergeRunner.run(Planner.plan(b, List.of(a, a), PlanOptions.defaults(), how), cuda, o,
                        new MergeRunner.Options(true, Backend.DEFAULT_BLOCK_BYTES), Progress.silent());
            }
        }
        try (Stream<Path> files = Files.list(cpuOut)) {
            for (Path p : files.toList()) {
                assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), fmt + ": " + p.getFileName());
            }
        }
    }
}
