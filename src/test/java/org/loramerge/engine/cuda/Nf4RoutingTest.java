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
 * adapted tensor goes to the GPU: one read from NF4 is dequantized there from its packed codes
 * (--to bf16), one written to NF4 is requantized there (--to nf4); the others are dequantized
 * (--to bf16) or copied without reaching a backend.
 */
class Nf4RoutingTest {
    private static final Path CASE = Paths.get("src/test/resources/qlora/plain_bs32");

    @ParameterizedTest
    @EnumSource(value = QuantTarget.class, names = {"BF16", "NF4"})
    void adaptedNf4TensorsGoToTheGpu(QuantTarget to) throws Exception {
        try (Checkpoint base = Checkpoint.open(CASE.resolve("base")); LoraAdapter adapter = LoraAdapter.open(CASE.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults().withTarget(to));
            int adaptedNf4 = 0;
            for (OutputTensor t : plan.tensors()) {
                if (t.isByteCopy()) {
                    continue;
                }
                TensorJob job = TensorJob.prepare(t);
                boolean adapted = !t.terms().isEmpty();
                assertEquals(adapted, CudaBackend.onGpu(job), t.name());
                if (adapted && (t.source().isQuantized() || t.isRequantized())) {
                    adaptedNf4++;
                    assertEquals(to == QuantTarget.NF4, t.isRequantized(), t.name());
                }
            }
            assertEquals(4, adaptedNf4);
        }
    }
}
