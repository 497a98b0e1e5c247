package org.loramerge.engine.cuda;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code merge --to nf4} and {@code --to fp4} requantized on the GPU from bases other than NF4
 * ({@link CudaRequantization}, kernels/nf4.cu nf4_requant and fp4_requant, fp4_measure) against the
 * CPU engine: GPTQ and AWQ bases quantized to NF4, and the FP4 models bitsandbytes saved
 * requantized to FP4 (plain and double-quantized; bf16, f16 and f32), each with the default row
 * blocks and the smallest: every output file byte-identical, the same survival report, and every
 * requantized weight requantized on the device. Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaFourBitRequantTest extends OnTheGpu {
    private static final Path RESOURCES = Path.of("src/test/resources");

    @TempDir
    Path dir;

    static Stream<Arguments> merges() {
        List<Arguments> out = new ArrayList<>();
        Path bnb = RESOURCES.resolve("bnb");
        List<Object[]> cases = List.of(
                new Object[] {RESOURCES.resolve("gptq_awq/gptq_v1_4bit_g32_actorder/base"), RESOURCES.resolve("gptq_awq/gptq_v1_4bit_g32_actorder/adapter"),
                    QuantTarget.NF4},
                new Object[] {RESOURCES.resolve("gptq_awq/gptq_v2_8bit_one_group/base"), RESOURCES.resolve("gptq_awq/gptq_v2_8bit_one_group/adapter"),
                    QuantTarget.NF4},
                new Object[] {RESOURCES.resolve("gptq_awq/awq_gemm_4bit_g32/base"), RESOURCES.resolve("gptq_awq/awq_gemm_4bit_g32/adapter"), QuantTarget.NF4},
                new Object[] {bnb.resolve("models/fp4-dq-bf16"), bnb.resolve("adapter"), QuantTarget.FP4},
                new Object[] {bnb.resolve("models/fp4-plain-f16"), bnb.resolve("adapter"), QuantTarget.FP4},
                new Object[] {bnb.resolve("models/fp4-dq-f32"), bnb.resolve("adapter"), QuantTarget.FP4});
        for (Object[] c : cases) {
            for (int blockBytes : new int[] {Backend.DEFAULT_BLOCK_BYTES, 1024}) {
                out.add(Arguments.of(c[0], c[1], c[2], blockBytes));
            }
        }
        return out.stream();
    }

    /**
     * Every quantized weight the adapter changes is requantized by {@link CudaRequantization}, and the
     * merge writes the CPU engine's bytes in every file (codes, absmax, nested absmax, quant state) and
     * reports its survival (codes changed exactly, norms to 1e-9).
     */
    @ParameterizedTest(name = "{0} --to {2}, blocks of {3} bytes")
    @MethodSource("merges")
    void fourBitRequantizationsOfOtherBasesRunOnTheDeviceAndWriteTheCpuEnginesBytes(Path base, Path adapter, QuantTarget to, int blockBytes)
            throws Exception {
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(to));
            int onDevice = 0;
            for (OutputTensor t : plan.tensors()) {
                if (!t.isRequantized()) {
                    continue;
                }
                try (Requantization r = cuda.openRequantization(TensorJob.prepare(t))) {
                    assertTrue(r instanceof CudaRequantization, t.name() + " is requantized on the device");
                }
                onDevice++;
            }
            assertTrue(onDevice > 0, base + ": some weight is requantized");
            MergeReport[] reports = mergeOnBoth(plan, base, adapter, blockBytes);
            CudaNf4Test.assertSameSurvival(reports[0], reports[1]);
            assertTrue(reports[1].requantization.codesChanged > 0, base + ": the adapter moved some codes");
        }
    }

    /** {@code plan} merged by the CPU engine into dir/cpu and by the GPU into dir/gpu; every file byte-identical. Returns {cpu, gpu} reports. */
    private MergeReport[] mergeOnBoth(MergePlan plan, Path base, Path adapter, int blockBytes) throws Exception {
        Path cpuOut = dir.resolve("cpu");
        Path gpuOut = dir.resolve("gpu");
        MergeRunner.Options options = new MergeRunner.Options(false, blockBytes);
        MergeReport cpuReport;
        MergeReport gpuReport;
        try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(base, adapter))) {
            cpuReport = MergeRunner.run(plan, cpu, o, options, Progress.silent());
        }
        try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(base, adapter))) {
            gpuReport = MergeRunner.run(plan, cuda, o, options, Progress.silent());
        }
        try (Stream<Path> files = Files.list(cpuOut)) {
            for (Path p : files.toList()) {
                assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), base + ": " + p.getFileName());
            }
        }
        return new MergeReport[] {cpuReport, gpuReport};
    }
}
