package org.loramerge.engine.cuda;

import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
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
import org.loramerge.quant.Nf4Output;
import org.loramerge.quant.Requantizer;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Where the GPU engine requantizes each weight of a {@code merge --to} a quantized format (no GPU
 * needed: routing only). NF4 and FP4 outputs are requantized on the device from every base the
 * device merges: NF4 and FP4 with their own settings, and GPTQ (4- and 8-bit) and AWQ quantized to
 * NF4; FP8 (GPTQ and AWQ quantized to FP8 too, the weights the adapter leaves alone included) and
 * int8 outputs by the byte requantization; an FP8 weight with one scale for the whole tensor by its
 * own two-step requantization.
 */
class RequantRoutingTest {
    private static final Path RESOURCES = Path.of("src/test/resources");

    static Stream<Arguments> merges() {
        Path bnb = RESOURCES.resolve("bnb");
        Path gptqAwq = RESOURCES.resolve("gptq_awq");
        Path gptqFp8 = RESOURCES.resolve("gptq_fp8");
        return Stream.of(
                Arguments.of(RESOURCES.resolve("qlora/dq_bs64/base"), RESOURCES.resolve("qlora/dq_bs64/adapter"), QuantTarget.NF4,
                        CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(bnb.resolve("models/nf4-plain-f32"), bnb.resolve("adapter"), QuantTarget.NF4, CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(bnb.resolve("models/fp4-dq-bf16"), bnb.resolve("adapter"), QuantTarget.FP4, CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(bnb.resolve("models/fp4-plain-f16"), bnb.resolve("adapter"), QuantTarget.FP4, CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(gptqAwq.resolve("gptq_v1_4bit_g32_actorder/base"), gptqAwq.resolve("gptq_v1_4bit_g32_actorder/adapter"), QuantTarget.NF4,
                        CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(gptqAwq.resolve("gptq_v2_8bit_one_group/base"), gptqAwq.resolve("gptq_v2_8bit_one_group/adapter"), QuantTarget.NF4,
                        CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(gptqAwq.resolve("awq_gemm_4bit_g32/base"), gptqAwq.resolve("awq_gemm_4bit_g32/adapter"), QuantTarget.NF4,
                        CudaBackend.RequantizedOn.DEVICE_4BIT),
                Arguments.of(bnb.resolve("models/int8"), bnb.resolve("adapter"), QuantTarget.INT8, CudaBackend.RequantizedOn.DEVICE_BYTES),
                Arguments.of(RESOURCES.resolve("fp8/fine_grained_128/base"), RESOURCES.resolve("fp8/fine_grained_128/adapter"), QuantTarget.FP8,
                        CudaBackend.RequantizedOn.DEVICE_BYTES),
                Arguments.of(RESOURCES.resolve("fp8/fine_grained_tensor/base"), RESOURCES.resolve("fp8/fine_grained_tensor/adapter"), QuantTarget.FP8,
                        CudaBackend.RequantizedOn.DEVICE_FP8_TENSOR),
                Arguments.of(gptqFp8.resolve("gptq_v1_4bit_g32_actorder/base"), gptqFp8.resolve("gptq_v1_4bit_g32_actorder/adapter"), QuantTarget.FP8,
                        CudaBackend.RequantizedOn.DEVICE_BYTES),
                Arguments.of(gptqFp8.resolve("gptq_v2_8bit_g64/base"), gptqFp8.resolve("gptq_v2_8bit_g64/adapter"), QuantTarget.FP8,
                        CudaBackend.RequantizedOn.DEVICE_BYTES),
                Arguments.of(gptqFp8.resolve("awq_gemm_4bit_g32/base"), gptqFp8.resolve("awq_gemm_4bit_g32/adapter"), QuantTarget.FP8,
                        CudaBackend.RequantizedOn.DEVICE_BYTES));
    }

    @ParameterizedTest(name = "{0} --to {2}: {3}")
    @MethodSource("merges")
    void everyRequantizedWeightOfTheMergeGoesWhereItsFormatIsRequantized(Path base, Path adapter, QuantTarget to, CudaBackend.RequantizedOn where)
            throws Exception {
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(to));
            int requantized = 0;
            for (OutputTensor t : plan.tensors()) {
                if (t.isRequantized()) {
                    requantized++;
                    assertEquals(where, CudaBackend.requantizedOn(TensorJob.prepare(t), Backend.DEFAULT_BLOCK_BYTES), t.name());
                }
            }
            assertTrue(requantized > 0, base + " --to " + to + " requantizes some weight");
        }
    }

    @Test
    void anFp8WeightWithOneScaleLargerThanTheDeviceKeepsIsRequantizedOnTheCpu() throws Exception {
        Path fp8 = RESOURCES.resolve("fp8/fine_grained_tensor");
        try (Checkpoint c = Checkpoint.open(fp8.resolve("base")); LoraAdapter a = LoraAdapter.open(fp8.resolve("adapter"))) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(QuantTarget.FP8));
            for (OutputTensor t : plan.tensors()) {
                if (t.isRequantized()) {
                    TensorJob job = TensorJob.prepare(t);
                    long elements = (long) job.rows() * job.cols();
                    int rowBytes = job.cols() * job.dstFormat().sizeInBytes();
                    assertEquals(CudaBackend.RequantizedOn.DEVICE_FP8_TENSOR, CudaBackend.requantizedOn(job, rowBytes), t.name() + ": a row fits");
                    assertEquals(CudaBackend.RequantizedOn.CPU, CudaBackend.requantizedOn(job, rowBytes - 1),
                            t.name() + ": a row past the device buffers stays on the CPU");
                    assertTrue(CudaFp8TensorRequantization.heldBytes(elements, job.dstFormat().sizeInBytes()) == elements * 13,
                            "BF16: X and W, fp64 ΔW and the codes");
                    assertTrue(CudaFp8TensorRequantization.heldBytes(300_000_000L, 2) > CudaFp8TensorRequantization.MAX_HELD_BYTES,
                            "a 300M-element weight (a large embedding) is past the cap");
                }
            }
        }
    }

    @Test
    void aFourBitWeightWhoseSmallestBandOfWholeBlocksExceedsTheDeviceBlockIsRequantizedOnTheCpu() throws Exception {
        Path bnb = RESOURCES.resolve("bnb");
        try (Checkpoint c = Checkpoint.open(bnb.resolve("models/fp4-dq-bf16")); LoraAdapter a = LoraAdapter.open(bnb.resolve("adapter"))) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(QuantTarget.FP4));
            for (OutputTensor t : plan.tensors()) {
                if (t.isRequantized()) {
                    TensorJob job = TensorJob.prepare(t);
                    int blocksize = ((Nf4Output) t.quantizedOutput()).template().blocksize();
                    long minRows = Requantizer.rowsOfWholeBlocks(job.cols(), blocksize);
                    int band = Math.toIntExact(minRows * job.cols() * job.dstFormat().sizeInBytes());
                    assertEquals(CudaBackend.RequantizedOn.DEVICE_4BIT, CudaBackend.requantizedOn(job, band), t.name() + ": the band fits");
                    assertEquals(CudaBackend.RequantizedOn.CPU, CudaBackend.requantizedOn(job, band - 1),
                            t.name() + ": a band past the device buffers stays on the CPU");
                }
            }
        }
    }
}
