package org.loramerge.pipeline;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.LoraMerge;
import org.loramerge.engine.Backend;
import org.loramerge.engine.WeightDelta;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.ExtractOptions;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.ExtractPlanner;
import org.loramerge.plan.TensorSource;
import org.loramerge.testutil.DenseModels;

/**
 * extract with several weights in flight, on the CPU engine made to decompose several at once (the
 * GPU engine's pipeline, without a device): the adapter is the same bytes as one weight at a time,
 * the report lists the modules in target order, and a bad weight among those in flight fails the
 * run with its own message, writes nothing, and every ΔW opened is closed before the run returns.
 */
class ExtractRunnerConcurrencyTest {
    private static final String LLAMA = "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"tie_word_embeddings\": false}\n";
    private static final String[] PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    private static final int LAYERS = 3;
    private static final int H = 64;
    private static final int I = 128;

    @TempDir
    Path dir;

    private static String proj(int layer, String p) {
        boolean mlp = p.equals("gate_proj") || p.equals("up_proj") || p.equals("down_proj");
        return "model.layers." + layer + (mlp ? ".mlp." : ".self_attn.") + p + ".weight";
    }

    private static int rows(String p) {
        return p.equals("gate_proj") || p.equals("up_proj") ? I : H;
    }

    private static int cols(String p) {
        return p.equals("down_proj") ? I : H;
    }

    /** {base, tuned, tuned with a NaN in layer 1's v_proj}: every projection moved by a rank-4 change and noise, in bf16. */
    private Path[] models() throws Exception {
        Random r = new Random(3);
        DenseModels base = new DenseModels();
        base.put("model.embed_tokens.weight", DType.BF16, new long[] {32, H}, DenseModels.gaussian(32 * H, 0.02, DType.BF16, r));
        base.put("model.norm.weight", DType.BF16, new long[] {H}, DenseModels.gaussian(H, 0.02, DType.BF16, r));
        for (int l = 0; l < LAYERS; l++) {
            for (String p : PROJECTIONS) {
                base.put(proj(l, p), DType.BF16, new long[] {rows(p), cols(p)}, DenseModels.gaussian(rows(p) * cols(p), 0.02, DType.BF16, r));
            }
        }
        DenseModels tuned = base.copy();
        FloatFormat bf16 = FloatFormat.of(DType.BF16);
        for (int l = 0; l < LAYERS; l++) {
            for (String p : PROJECTIONS) {
                int m = rows(p);
                int n = cols(p);
                double[] u = DenseModels.gaussian(m * 4, 0.05, DType.F32, r);
                double[] v = DenseModels.gaussian(4 * n, 0.05, DType.F32, r);
                double[] w = base.values(proj(l, p)).clone();
                for (int i = 0; i < m; i++) {
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int k = 0; k < 4; k++) {
                            s += u[i * 4 + k] * v[k * n + j];
                        }
                        w[i * n + j] = bf16.round(w[i * n + j] + s + 1e-4 * r.nextGaussian());
                    }
                }
                tuned.put(proj(l, p), DType.BF16, new long[] {m, n}, w);
            }
        }
        DenseModels bad = tuned.copy();
        double[] w = bad.values(proj(1, "v_proj")).clone();
        w[40 * H + 9] = Double.NaN;
        bad.put(proj(1, "v_proj"), DType.BF16, new long[] {H, H}, w);
        return new Path[] {base.write(dir.resolve("base"), LLAMA), tuned.write(dir.resolve("tuned"), LLAMA), bad.write(dir.resolve("bad"), LLAMA)};
    }

    /** The CPU engine, decomposing {@code decompositions} weights at once and forming {@code ahead} ahead; counts the ΔW open. */
    private static final class Concurrent extends ForwardingBackend {
        final int decompositions;
        final int ahead;
        final AtomicInteger open = new AtomicInteger();
        final AtomicInteger peak = new AtomicInteger();

        Concurrent(int decompositions, int ahead) {
            super(2);
            this.decompositions = decompositions;
            this.ahead = ahead;
        }

        @Override
        public int deltaDecompositions() {
            return decompositions;
        }

        @Override
        public int deltasAhead() {
            return ahead;
        }

        @Override
        public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws Exception {
            WeightDelta d = cpu.openDelta(name, base, tuned, rows, cols);
            peak.accumulateAndGet(open.incrementAndGet(), Math::max);
            return new WeightDelta() {
                @Override
                public double deltaSquared() {
                    return d.deltaSquared();
                }

                @Override
                public RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException {
                    return d.svd(rank, options);
                }

                @Override
                public double residualSquared(Matrix u, Matrix vt) throws IOException {
                    return d.residualSquared(u, vt);
                }

                @Override
                public String device() {
                    return d.device();
                }

                @Override
                public void close() {
                    d.close();
                    open.decrementAndGet();
                }
            };
        }
    }

    private static ExtractReport run(Backend backend, Path base, Path tuned, Path out) throws Exception {
        try (Checkpoint b = LoraMerge.openModel("--base", base, false);
             Checkpoint t = LoraMerge.openModel("--tuned", tuned, false);
             AtomicOutput output = AtomicOutput.create(out, false, List.of(base, tuned))) {
            ExtractPlan plan = ExtractPlanner.plan(b, t, new ExtractOptions(null, false, 4, null, 256, ExtractOptions.Others.SAVE, DType.F32, "base"));
            return ExtractRunner.run(plan, backend, output, new ExtractRunner.Options(RandomizedSvd.Options.defaults(1), false),
                    new Progress(new PrintStream(PrintStream.nullOutputStream()), false, 0, 0, "extracting"));
        }
    }

    @Test
    void severalWeightsDecomposedAtOnceWriteTheSameAdapterInTargetOrderAsOneAtATime() throws Exception {
        Path[] m = models();
        Path alone = dir.resolve("alone");
        Path together = dir.resolve("together");
        ExtractReport a;
        ExtractReport b;
        try (Concurrent one = new Concurrent(1, 1); Concurrent four = new Concurrent(4, 3)) {
            a = run(one, m[0], m[1], alone);
            b = run(four, m[0], m[1], together);
            assertEquals(2, one.peak.get(), "one decomposed, one formed ahead");
            assertTrue(four.peak.get() > 2 && four.peak.get() <= 7, "at most 4 decomposed and 3 ahead: " + four.peak.get());
            assertEquals(0, four.open.get());
        }
        assertArrayEquals(Files.readAllBytes(alone.resolve("adapter_model.safetensors")), Files.readAllBytes(together.resolve("adapter_model.safetensors")));
        assertEquals(Files.readString(alone.resolve("adapter_config.json")), Files.readString(together.resolve("adapter_config.json")));
        assertEquals(LAYERS * PROJECTIONS.length, b.modules.size());
        for (int i = 0; i < b.modules.size(); i++) {
            assertEquals(a.modules.get(i).name(), b.modules.get(i).name(), "target order");
            assertEquals(a.modules.get(i).relativeError(), b.modules.get(i).relativeError());
        }
        assertEquals(4, b.timing.decomposeThreads());
    }

    @Test
    void aBadWeightAmongThoseInFlightWritesNothingAndClosesEveryDeltaOpened() throws Exception {
        Path[] m = models();
        Path out = dir.resolve("adapter");
        try (Concurrent four = new Concurrent(4, 3)) {
            ExtractException e = assertThrows(ExtractException.class, () -> run(four, m[0], m[2], out));
            assertEquals(ExtractException.Reason.NON_FINITE, e.reason());
            assertTrue(e.getMessage().contains(proj(1, "v_proj")) && e.getMessage().contains("[40, 9]"), e.getMessage());
            assertEquals(0, four.open.get(), "every ΔW formed ahead or being decomposed was closed");
            assertFalse(Files.exists(out), "nothing written");
            try (var left = Files.list(dir)) {
                assertTrue(left.noneMatch(p -> p.getFileName().toString().startsWith(".adapter")), "no hidden folder left behind");
            }
            assertEquals(LAYERS * PROJECTIONS.length, run(four, m[0], m[1], out).modules.size(), "the backend extracts the good pair after");
            assertEquals(0, four.open.get());
        }
    }
}
