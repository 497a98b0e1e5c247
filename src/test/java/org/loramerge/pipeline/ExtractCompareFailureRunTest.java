package org.loramerge.pipeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.LoraMerge;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.ExtractOptions;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.ExtractPlanner;
import org.loramerge.testutil.DenseModels;

/**
 * extract on the CPU engine, a NaN in an untargeted tensor of the tuned model: the run must fail
 * with that NaN (exit 3), not with an I/O error on a target whose checkpoint file the cancelled
 * comparisons closed. The others are compared on four threads.
 */
class ExtractCompareFailureRunTest {
    private static final String LLAMA = "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"tie_word_embeddings\": false}\n";
    private static final String[] PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    private static final int H = 512;

    @TempDir
    Path dir;

    private static String proj(int layer, String p) {
        boolean mlp = p.equals("gate_proj") || p.equals("up_proj") || p.equals("down_proj");
        return "model.layers." + layer + (mlp ? ".mlp." : ".self_attn.") + p + ".weight";
    }

    @Test
    void aNaNInAnUntargetedTensorFailsTheRunWithThatNaN() throws Exception {
        Random r = new Random(11);
        DenseModels base = new DenseModels();
        base.put("lm_head.weight", DType.F32, new long[] {32, H}, DenseModels.gaussian(32 * H, 0.02, DType.F32, r));
        base.put("model.embed_tokens.weight", DType.F32, new long[] {8200, H}, DenseModels.gaussian(8200 * H, 0.02, DType.F32, r));
        base.put("model.norm.weight", DType.F32, new long[] {H}, DenseModels.gaussian(H, 0.02, DType.F32, r));
        for (int l = 0; l < 4; l++) {
            for (String p : PROJECTIONS) {
                base.put(proj(l, p), DType.F32, new long[] {H, H}, DenseModels.gaussian(H * H, 0.02, DType.F32, r));
            }
        }
        DenseModels tuned = base.copy();
        for (int l = 0; l < 4; l++) {
            for (String p : PROJECTIONS) {
                double[] w = tuned.values(proj(l, p)).clone();
                for (int i = 0; i < w.length; i++) {
                    w[i] += 1e-3 * r.nextGaussian();
                }
                tuned.put(proj(l, p), DType.F32, new long[] {H, H}, w);
            }
        }
        double[] head = tuned.values("lm_head.weight").clone();
        head[3] = Double.NaN;
        tuned.put("lm_head.weight", DType.F32, new long[] {32, H}, head);
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = tuned.write(dir.resolve("tuned"), LLAMA);
        Path out = dir.resolve("adapter");
        try (Checkpoint cb = LoraMerge.openModel("--base", b, false);
             Checkpoint ct = LoraMerge.openModel("--tuned", t, false);
             AtomicOutput output = AtomicOutput.create(out, false, List.of(b, t));
             CpuBackend cpu = new CpuBackend(2)) {
            ExtractPlan plan = ExtractPlanner.plan(cb, ct, new ExtractOptions(null, false, 4, null, 256, ExtractOptions.Others.SAVE, DType.F32, "base"));
            assertEquals("lm_head.weight", plan.others().get(0).name(), "the bad tensor is compared first");
            try {
                ExtractRunner.run(plan, cpu, output, new ExtractRunner.Options(RandomizedSvd.Options.defaults(1), false, 4),
                        new Progress(new PrintStream(PrintStream.nullOutputStream()), false, 0, 0, "extracting"));
                fail("the NaN in lm_head.weight was not reported");
            } catch (ExtractException e) {
                assertEquals(ExtractException.Reason.NON_FINITE, e.reason());
                assertTrue(e.getMessage().contains("lm_head.weight"), e.getMessage());
            } catch (Exception e) {
                throw new AssertionError("the run failed with " + e + " instead of the NaN in lm_head.weight", e);
            }
        }
    }
}
