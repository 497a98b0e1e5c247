package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.ExpertSlice;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * MoE experts on the GPU engine: every tensor LoRA on expert parameters changes goes to the
 * device (a per-expert tensor has one ordinary term; a fused expert stack one term per expert, on
 * that expert's rows), and the device writes the CPU engine's bytes, also for blocks that span
 * experts; so do two expert adapters combined by cat, whose terms on the same expert's rows fold
 * into one. The routing tests need no GPU; the others skip themselves without one.
 */
class CudaMoeTest {
    private static final Path MOE = Paths.get("src/test/resources/moe");
    private static CudaBackend cuda;

    @TempDir
    Path dir;

    static Stream<String> cases() throws Exception {
        try (Stream<Path> s = Files.list(MOE)) {
            return s.filter(p -> Files.exists(p.resolve("case.json"))).map(p -> p.getFileName().toString()).sorted().toList().stream();
        }
    }

    private static CudaBackend device() {
        if (cuda == null) {
            cuda = GpuTests.openOrSkip();
        }
        return cuda;
    }

    @AfterAll
    static void closeDevice() {
        if (cuda != null) {
            cuda.close();
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void everyTensorAnExpertAdapterChangesGoesToTheGpu(String name) throws Exception {
        Path caseDir = MOE.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            int experts = 0;
            for (OutputTensor t : plan.tensors()) {
                if (t.terms().isEmpty()) {
                    continue;
                }
                assertTrue(CudaBackend.onGpu(TensorJob.prepare(t)), t.name() + " must be merged on the GPU");
                experts += t.terms().stream().anyMatch(x -> x.slice() != null) ? 1 : 0;
            }
            assertTrue(experts > 0, name + " has expert terms");
        }
    }

    /** The case's adapter combined with itself by cat at weights 0.7 and 0.3 (scales that do not fold exactly). */
    private static MergePlan catWithItself(Checkpoint base, LoraAdapter adapter) throws Exception {
        Combination how = Combination.of(CombineMethod.CAT, 2, List.of(0.7, 0.3), 1.0, Combination.MajoritySign.TOTAL, 1.0, 0, 0, null);
        return Planner.plan(base, List.of(adapter, adapter), PlanOptions.defaults(), how);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void twoExpertAdaptersCombinedByCatGoToTheGpuOneFoldedSegmentPerExpert(String name) throws Exception {
        Path caseDir = MOE.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            for (OutputTensor t : catWithItself(base, adapter).tensors()) {
                if (t.terms().isEmpty()) {
                    continue;
                }
                TensorJob job = TensorJob.prepare(t);
                assertTrue(CudaBackend.onGpu(job), t.name() + " must be merged on the GPU");
                List<List<LowRankTerm>> segments = CudaTensorMerge.segments(job.terms(), job.rows());
                assertEquals(job.terms().size() / 2, segments.size(), t.name() + ": one segment per expert (or one for the tensor)");
                segments.forEach(s -> assertEquals(2, s.size(), t.name() + ": each adapter's term on the segment's rows"));
            }
        }
    }

    @Tag("gpu")
    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void expertAdaptersCombinedByCatAreByteIdenticalOnBothEngines(String name) throws Exception {
        Path caseDir = MOE.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                MergeRunner.run(catWithItself(base, adapter), cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                MergeRunner.run(catWithItself(base, adapter), device(), o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                }
            }
        }
    }

    @Tag("gpu")
    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void goldenMoeOutputsAreByteIdentical(String name) throws Exception {
        Path caseDir = MOE.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, device(), o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                }
            }
        }
    }

    /**
     * A fused expert stack [5, 300, 256] (gpt-oss's layout, [E, in, out]) with one term per
     * expert, merged in blocks of 128 rows: most blocks span two experts, whose segments use
     * different factors; the GPU's blocks must be the CPU's, byte for byte.
     */
    @Tag("gpu")
    @Test
    void blocksThatSpanExpertsEqualTheCpuBlocks() throws Exception {
        int experts = 5;
        int d1 = 300;
        int d2 = 256;
        int rank = 8;
        SplittableRandom rnd = new SplittableRandom(12);
        TensorFiles files = new TensorFiles()
                .add("w", DType.BF16, new long[] {experts, d1, d2}, CudaBackendTest.gaussian(rnd, experts * d1 * d2, 0.02))
                .add("a", DType.F32, new long[] {(long) rank * experts, d1}, CudaBackendTest.gaussian(rnd, rank * experts * d1, 0.05))
                .add("b", DType.F32, new long[] {d2, (long) rank * experts}, CudaBackendTest.gaussian(rnd, d2 * rank * experts, 0.02));
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            List<TermSpec> terms = new ArrayList<>();
            for (int e = 0; e < experts; e++) {
                terms.add(TermSpec.expert("experts.gate_up_proj", TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 2.5,
                        new ExpertSlice(e, experts, true, 0, (long) e * d1, d1)));
            }
            OutputTensor out = OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"), new OutputTensor.Update(terms, null, null))
                    .asExpertRows();
            TensorJob job = TensorJob.prepare(out);
            assertTrue(CudaBackend.onGpu(job));
            int rowBytes = d2 * 2;
            int rowsPerBlock = 128;
            try (CpuBackend cpu = new CpuBackend(1); TensorMerge onCpu = cpu.openMerge(job); TensorMerge onGpu = device().openMerge(job)) {
                assertEquals(CudaTensorMerge.class, onGpu.getClass());
                for (long r0 = 0; r0 < job.rows(); r0 += rowsPerBlock) {
                    int n = (int) Math.min(rowsPerBlock, job.rows() - r0);
                    try (MappedRegion src = f.map(f.tensor("w"), r0 * rowBytes, (long) n * rowBytes)) {
                        ByteBuffer expected = ByteBuffer.allocateDirect(n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        ByteBuffer got = device().allocateBlockBuffer(n * rowBytes);
                        onCpu.mergeRows(r0, n, src.bytes(), expected, new BlockStats());
                        got.clear();
                        onGpu.mergeRows(r0, n, src.bytes(), got, new BlockStats());
                        assertEquals(expected.position(0).limit(n * rowBytes), got.position(0).limit(n * rowBytes),
                                "rows " + r0 + ".." + (r0 + n) + " differ between GPU and CPU");
                    }
                }
            }
        }
    }
}
