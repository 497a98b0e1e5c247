package org.loramerge.pipeline;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.TensorSource;
import org.loramerge.testutil.DenseModels;

/**
 * extract compares the untargeted tensors on several threads while the targets are still being
 * formed and decomposed from the same checkpoint files. When one comparison fails (a NaN in an
 * untargeted tensor) the others are cancelled; that must not close the checkpoints' files under
 * the targets that are still reading them, or the run reports an unrelated I/O error on a target
 * instead of the NaN. Compared on four threads.
 */
class ExtractCompareFailureTest {
    private static final String LLAMA = "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"tie_word_embeddings\": false}\n";

    @TempDir
    Path dir;

    @Test
    void aFailedComparisonLeavesTheCheckpointsReadableForTheTargetsStillRunning() throws Exception {
        Random r = new Random(5);
        DenseModels base = new DenseModels();
        base.put("bad.weight", DType.F32, new long[] {8}, DenseModels.gaussian(8, 0.02, DType.F32, r));
        int bigRows = 4100; // two of DeltaRows' blocks of 4M elements at 1024 columns
        for (int k = 0; k < 3; k++) {
            base.put("big" + k + ".weight", DType.F32, new long[] {bigRows, 1024}, DenseModels.gaussian(bigRows * 1024, 0.02, DType.F32, r));
        }
        base.put("target.weight", DType.F32, new long[] {16, 16}, DenseModels.gaussian(256, 0.02, DType.F32, r));
        DenseModels tuned = base.copy();
        double[] bad = tuned.values("bad.weight").clone();
        bad[0] = Double.NaN;
        tuned.put("bad.weight", DType.F32, new long[] {8}, bad);
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = tuned.write(dir.resolve("tuned"), LLAMA);
        try (Checkpoint cb = Checkpoint.open(b); Checkpoint ct = Checkpoint.open(t)) {
            List<ExtractPlan.Other> others = new ArrayList<>();
            for (String name : List.of("bad.weight", "big0.weight", "big1.weight", "big2.weight")) {
                others.add(new ExtractPlan.Other(name, name, new TensorSource(cb.fileOf(name), cb.tensor(name)),
                        new TensorSource(ct.fileOf(name), ct.tensor(name)), false, false));
            }
            ExtractException x = assertThrows(ExtractException.class, () -> ExtractRunner.compareAll(others, 4));
            assertEquals(ExtractException.Reason.NON_FINITE, x.reason());
            // a target weight of the same files, as the forming and decomposing threads read it meanwhile
            TensorSource target = new TensorSource(ct.fileOf("target.weight"), ct.tensor("target.weight"));
            TensorSource targetBase = new TensorSource(cb.fileOf("target.weight"), cb.tensor("target.weight"));
            assertDoesNotThrow(() -> target.read(0, 64).close(), "the tuned checkpoint was closed by the cancelled comparisons");
            assertDoesNotThrow(() -> targetBase.read(0, 64).close(), "the base checkpoint was closed by the cancelled comparisons");
        }
    }
}
