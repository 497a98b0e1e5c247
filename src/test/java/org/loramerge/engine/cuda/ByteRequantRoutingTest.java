package org.loramerge.engine.cuda;

import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.Checkpoint;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Which {@code --to fp8} and {@code --to int8} merges the GPU engine requantizes on the device (no
 * GPU needed: routing only): every FP8 weight with a scale per block, row or group of a derived
 * grid, and every LLM.int8 weight, but not an FP8 weight with one scale for the whole tensor, nor
 * one whose band of quantization blocks is larger than a worker's buffers.
 */
class ByteRequantRoutingTest {
    @TempDir
    Path dir;

    static Stream<ByteRequantBases.Spec> specs() {
        return ByteRequantBases.specs().stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("specs")
    void fp8AndInt8RequantizationsRunOnTheDeviceOneScalePerTensorInTwoSteps(ByteRequantBases.Spec spec) throws Exception {
        Path base = ByteRequantBases.writeBase(dir.resolve("base"), spec);
        Path adapter = ByteRequantBases.writeAdapter(dir.resolve("adapter"), spec, 0.05);
        QuantTarget to = spec.kind().equals("int8") ? QuantTarget.INT8 : QuantTarget.FP8;
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(to));
            OutputTensor t = plan.tensors().stream().filter(o -> o.name().equals(ByteRequantBases.WEIGHT)).findFirst().orElseThrow();
            TensorJob job = TensorJob.prepare(t);
            assertTrue(CudaBackend.onGpu(job), spec + ": merged on the GPU");
            boolean tensor = spec.kind().equals("fp8-tensor");
            assertEquals(!tensor, CudaByteRequantization.covers(job, Backend.DEFAULT_BLOCK_BYTES),
                    spec + ": requantized in bands of blocks unless one scale covers the tensor");
            assertEquals(tensor ? CudaBackend.RequantizedOn.DEVICE_FP8_TENSOR : CudaBackend.RequantizedOn.DEVICE_BYTES,
                    CudaBackend.requantizedOn(job, Backend.DEFAULT_BLOCK_BYTES), spec + ": and one scale for the tensor in two steps, on the device too");
            long band = spec.kind().equals("fp8-block") ? spec.block() : spec.kind().equals("fp8-derived") ? 2 : 1;
            int tooSmall = (int) (band * spec.cols() * job.dstFormat().sizeInBytes() - 1);
            assertFalse(CudaByteRequantization.covers(job, tooSmall), spec + ": a band of blocks past the device buffers stays on the CPU");
        }
    }
}
