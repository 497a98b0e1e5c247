package org.loramerge.engine.cuda;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
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
import org.loramerge.quant.QuantException;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code merge --to fp8} and {@code --to int8} on the GPU ({@link CudaByteRequantization},
 * kernels/quant.cu fp8_requant and int8_requant) against the CPU engine: the same bytes in every
 * file and the same survival report, on every layout, one scale per tensor included
 * ({@link CudaFp8TensorRequantization}, fp8_tensor_stage and fp8_tensor_requant, from row blocks of any
 * size). Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaByteRequantTest extends OnTheGpu {
    @TempDir
    Path dir;

    static Stream<Arguments> merges() {
        List<Arguments> out = new ArrayList<>();
        for (ByteRequantBases.Spec spec : ByteRequantBases.specs()) {
            // the default blocks (the whole weight in one or a few row blocks) and the smallest (one band of blocks, or a row, each)
            for (int blockBytes : new int[] {Backend.DEFAULT_BLOCK_BYTES, 1024}) {
                out.add(Arguments.of(spec, blockBytes));
            }
        }
        return out.stream();
    }

    /**
     * The weight merged and requantized to its own format by both engines: every output file
     * byte-identical (codes, scales, weight_format), the survival report the CPU's (codes changed
     * exactly, norms to 1e-9), and the GPU engine requantizing every layout on the device.
     */
    @ParameterizedTest(name = "{0}, blocks of {1} bytes")
    @MethodSource("merges")
    void requantizedMergesAreTheCpuEnginesBytesAndSurvival(ByteRequantBases.Spec spec, int blockBytes) throws Exception {
        Path base = ByteRequantBases.writeBase(dir.resolve("base"), spec);
        Path adapter = ByteRequantBases.writeAdapter(dir.resolve("adapter"), spec, spec.kind().equals("int8") ? 0.2 : 0.05);
        QuantTarget to = spec.kind().equals("int8") ? QuantTarget.INT8 : QuantTarget.FP8;
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(to));
            OutputTensor t = plan.tensors().stream().filter(o -> o.name().equals(ByteRequantBases.WEIGHT)).findFirst().orElseThrow();
            try (Requantization r = cuda.openRequantization(TensorJob.prepare(t))) {
                assertTrue(spec.kind().equals("fp8-tensor") ? r instanceof CudaFp8TensorRequantization : r instanceof CudaByteRequantization,
                        spec + ": requantized on the device, in two steps where its one scale needs the whole weight");
            }
            MergeReport[] reports = mergeOnBoth(plan, base, adapter, blockBytes);
            CudaNf4Test.assertSameSurvival(reports[0], reports[1]);
            assertTrue(reports[1].requantization.codesChanged > 0, spec + ": the adapter moved some codes");
            assertTrue(reports[1].requantization.codesChanged < reports[1].requantization.codes, spec + ": and left some");
        }
    }

    /**
     * A merged LLM.int8 value past fp16's range, where bitsandbytes quantizes: the GPU engine
     * refuses the weight with the CPU engine's own error (the element and the reason).
     */
    @Test
    void anInt8ValuePastFp16IsRefusedWithTheCpuEnginesError() throws Exception {
        ByteRequantBases.Spec spec = ByteRequantBases.specs().stream().filter(s -> s.kind().equals("int8")).findFirst().orElseThrow();
        Path base = ByteRequantBases.writeBase(dir.resolve("base"), spec);
        Path adapter = ByteRequantBases.writeAdapter(dir.resolve("adapter"), spec, 1e6);
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(QuantTarget.INT8));
            MergeRunner.Options options = new MergeRunner.Options(false, Backend.DEFAULT_BLOCK_BYTES);
            QuantException onCpu;
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(dir.resolve("cpu"), false, List.of(base, adapter))) {
                onCpu = rootQuantException(assertThrows(Exception.class, () -> MergeRunner.run(plan, cpu, o, options, Progress.silent())));
            }
            QuantException onGpu;
            try (AtomicOutput o = AtomicOutput.create(dir.resolve("gpu"), false, List.of(base, adapter))) {
                onGpu = rootQuantException(assertThrows(Exception.class, () -> MergeRunner.run(plan, cuda, o, options, Progress.silent())));
            }
            assertEquals(onCpu.getMessage(), onGpu.getMessage());
            assertTrue(onGpu.getMessage().contains("fp16"), onGpu.getMessage());
        }
    }

    private static QuantException rootQuantException(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof QuantException) {
                return (QuantException) t;
            }
        }
        throw new AssertionError("no QuantException in the chain", e);
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
