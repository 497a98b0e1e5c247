package org.loramerge.engine.cuda;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * MoE experts on quantized bases (src/test/resources/moe_quant) on the GPU engine: every per-expert
 * FP8, GPTQ or AWQ weight an expert adapter changes is merged on the device (one term, its expert's slice,
 * on all of its rows) and requantized where its format is ({@code --to fp8} with 8x8 blocks by the
 * byte requantization, with one scale per weight by the two-step one-scale requantization; GPTQ {@code --to nf4} by the 4-bit
 * requantization, AWQ's the same way), and the device writes the CPU engine's bytes for every target. The routing tests
 * need no GPU; the others skip themselves without one.
 */
class CudaMoeQuantizedTest {
    private static final Path CASES = Paths.get("src/test/resources/moe_quant");
    private static CudaBackend cuda;

    @TempDir
    Path dir;

    static Stream<Arguments> merges() {
        return Stream.of(
                Arguments.of("qwen3_moe_fp8_block8", QuantTarget.BF16, null),
                Arguments.of("qwen3_moe_fp8_block8", QuantTarget.FP8, CudaBackend.RequantizedOn.DEVICE_BYTES),
                Arguments.of("mixtral_fp8_tensor", QuantTarget.BF16, null),
                Arguments.of("mixtral_fp8_tensor", QuantTarget.FP8, CudaBackend.RequantizedOn.DEVICE_FP8_TENSOR),
                Arguments.of("qwen3_moe_ct_fp8_channel", QuantTarget.BF16, null),
                Arguments.of("mixtral_gptq_4bit_g8", QuantTarget.F16, null),
                Arguments.of("mixtral_gptq_4bit_g8", QuantTarget.NF4, CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of("qwen3_moe_awq_4bit_g8", QuantTarget.F16, null),
                Arguments.of("qwen3_moe_awq_4bit_g8", QuantTarget.NF4, CudaBackend.RequantizedOn.DEVICE_4BIT));
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
            cuda = null;
        }
    }

    private static MergePlan plan(Checkpoint base, LoraAdapter adapter, QuantTarget to) throws Exception {
        return Planner.plan(base, adapter, PlanOptions.defaults().withTarget(to));
    }

    @ParameterizedTest(name = "{0} --to {1}")
    @MethodSource("merges")
    void everyExpertWeightTheAdapterChangesIsMergedOnTheGpuAndRequantizedWhereItsFormatIs(String name, QuantTarget to,
            CudaBackend.RequantizedOn where) throws Exception {
        Path caseDir = CASES.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            int experts = 0;
            for (OutputTensor t : plan(base, adapter, to).tensors()) {
                if (!t.isAdapted()) {
                    continue;
                }
                TensorJob job = TensorJob.prepare(t);
                assertTrue(CudaBackend.onGpu(job), t.name() + " must be merged on the GPU");
                if (where != null) {
                    assertTrue(t.isRequantized(), t.name());
                    assertEquals(where, CudaBackend.requantizedOn(job, Backend.DEFAULT_BLOCK_BYTES), t.name());
                }
                experts += t.terms().stream().anyMatch(x -> x.slice() != null) ? 1 : 0;
            }
            assertEquals(12, experts, name + ": 4 experts x 3 projections take an expert's slice");
        }
    }

    @Tag("gpu")
    @ParameterizedTest(name = "{0} --to {1}")
    @MethodSource("merges")
    void expertMergesOnQuantizedBasesAreByteIdenticalOnBothEngines(String name, QuantTarget to, CudaBackend.RequantizedOn where) throws Exception {
        Path caseDir = CASES.resolve(name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan(base, adapter, to), cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan(base, adapter, to), device(), o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + " --to " + to + ": " + p.getFileName());
                }
            }
        }
    }
}
