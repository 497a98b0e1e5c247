package org.loramerge.engine.cuda;

import java.nio.file.Path;
import java.nio.file.Paths;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.Checkpoint;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Which tensors of a QLoRA merge the GPU engine computes (no GPU needed: routing only). Every
 * tensor read from or written to NF4 takes the CPU path inside CudaBackend; the dense lm_head of
 * the same model still goes to the GPU.
 */
class Nf4RoutingTest {
    private static final Path CASE = Paths.get("src/test/resources/qlora/plain_bs32");

    @ParameterizedTest
    @EnumSource(value = QuantTarget.class, names = {"BF16", "NF4"})
    void nf4TensorsStayOnTheCpu(QuantTarget to) throws Exception {
        try (Checkpoint base = Checkpoint.open(CASE.resolve("base")); LoraAdapter adapter = LoraAdapter.open(CASE.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults().withTarget(to));
            int nf4 = 0;
            for (OutputTensor t : plan.tensors()) {
                if (t.isByteCopy()) {
                    continue;
                }
                boolean quantized = t.source().isQuantized() || t.isRequantized();
                nf4 += quantized ? 1 : 0;
                assertEquals(!quantized, CudaBackend.onGpu(TensorJob.prepare(t)), t.name());
            }
            assertEquals(to == QuantTarget.NF4 ? 4 : 14, nf4);
        }
    }
}
