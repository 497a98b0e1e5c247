package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.LoraMerge;
import org.loramerge.cli.Main;
import org.loramerge.engine.DeltaRows;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuWeightDelta;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.ExtractReport;
import org.loramerge.pipeline.ExtractRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.ExtractOptions;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.ExtractPlanner;
import org.loramerge.plan.TensorSource;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.DenseModels;

/**
 * extract's concurrency on the GPU engine: ΔW formed in many small blocks on several threads is
 * the CPU's bit for bit, with the same ‖ΔW‖² bits as one block; several weights formed ahead and
 * decomposed at once write the same adapter, byte for byte, as one weight at a time; and a bad
 * weight among those in flight fails the run with the CPU engine's message, writes nothing and
 * gives every ΔW's device memory back, the engine then extracting as before.
 */
@Tag("gpu")
class CudaExtractPipelineTest {
    private static final String LLAMA = "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"tie_word_embeddings\": false}\n";
    private static final String[] KNOBS = {"loramerge.blockBytes", "loramerge.streams", "loramerge.svds"};
    private static final int H = 768;
    private static final int I = 2048;
    private static final int V = 64;

    @TempDir
    Path dir;

    @AfterEach
    void clearKnobs() {
        for (String k : KNOBS) {
            System.clearProperty(k);
        }
    }

    /**
     * The GPU engine with the smallest blocks (1 MiB: a 768-wide bf16 weight forms in blocks of 341
     * rows), four forming threads and {@code svds} weights decomposed at once; skips where there is
     * no device.
     */
    private static CudaBackend smallBlocks(int svds) {
        System.setProperty("loramerge.blockBytes", String.valueOf(1 << 20));
        System.setProperty("loramerge.streams", "4");
        System.setProperty("loramerge.svds", String.valueOf(svds));
        try {
            return GpuTests.openOrSkip();
        } finally {
            for (String k : KNOBS) {
                System.clearProperty(k);
            }
        }
    }

    private static String proj(int layer, String name) {
        boolean mlp = name.equals("gate_proj") || name.equals("up_proj") || name.equals("down_proj");
        return "model.layers." + layer + (mlp ? ".mlp." : ".self_attn.") + name + ".weight";
    }

    private static final String[] PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

    /**
     * A 2-layer Llama-shaped base (bf16, H = 768, I = 2048) and a tuned copy whose every projection
     * moved by a rank-8 change plus noise, each rounded to bf16: {base, tuned}, and when {@code
     * nanProjection} names a projection also a third model, the tuned one with a NaN at row 700,
     * column 3 of that projection of layer {@code nanLayer} (in the third block of the smallest
     * blocks).
     */
    private Path[] models(int nanLayer, String nanProjection) throws Exception {
        Random r = new Random(7);
        DenseModels base = new DenseModels();
        base.put("model.embed_tokens.weight", DType.BF16, new long[] {V, H}, DenseModels.gaussian(V * H, 0.02, DType.BF16, r));
        base.put("lm_head.weight", DType.BF16, new long[] {V, H}, DenseModels.gaussian(V * H, 0.02, DType.BF16, r));
        base.put("model.norm.weight", DType.BF16, new long[] {H}, DenseModels.gaussian(H, 0.02, DType.BF16, r));
        for (int l = 0; l < 2; l++) {
            for (String p : PROJECTIONS) {
                base.put(proj(l, p), DType.BF16, new long[] {rows(p), cols(p)}, DenseModels.gaussian(rows(p) * cols(p), 0.02, DType.BF16, r));
            }
        }
        DenseModels tuned = base.copy();
        FloatFormat bf16 = FloatFormat.of(DType.BF16);
        for (int l = 0; l < 2; l++) {
            for (String p : PROJECTIONS) {
                int rows = rows(p);
                int cols = cols(p);
                double[] u = DenseModels.gaussian(rows * 8, 0.05, DType.F32, r);
                double[] v = DenseModels.gaussian(8 * cols, 0.05, DType.F32, r);
                double[] w = base.values(proj(l, p)).clone();
                for (int i = 0; i < rows; i++) {
                    for (int j = 0; j < cols; j++) {
                        double s = 0;
                        for (int k = 0; k < 8; k++) {
                            s += u[i * 8 + k] * v[k * cols + j];
                        }
                        w[i * cols + j] = bf16.round(w[i * cols + j] + s + 1e-4 * r.nextGaussian());
                    }
                }
                tuned.put(proj(l, p), DType.BF16, new long[] {rows, cols}, w);
            }
        }
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = tuned.write(dir.resolve("tuned"), LLAMA);
        if (nanProjection == null) {
            return new Path[] {b, t};
        }
        String name = proj(nanLayer, nanProjection);
        double[] w = tuned.values(name).clone();
        w[700 * cols(nanProjection) + 3] = Double.NaN;
        DenseModels bad = tuned.copy();
        bad.put(name, DType.BF16, new long[] {rows(nanProjection), cols(nanProjection)}, w);
        return new Path[] {b, t, bad.write(dir.resolve("tuned-nan"), LLAMA)};
    }

    private static int rows(String projection) {
        return projection.equals("gate_proj") || projection.equals("up_proj") ? I : H;
    }

    private static int cols(String projection) {
        return projection.equals("down_proj") ? I : H;
    }

    private static TensorSource source(Path model, String name) throws Exception {
        SafetensorsFile f = SafetensorsFile.open(model.resolve("model.safetensors"));
        return new TensorSource(f, f.tensor(name));
    }

    @Test
    void deltaFormedInManySmallBlocksOnSeveralThreadsIsTheCpusBitForBitWithTheSameNormAsOneBlock() throws Exception {
        Path[] m = models(0, null);
        String name = proj(1, "up_proj");
        TensorSource b = source(m[0], name);
        TensorSource t = source(m[1], name);
        CudaBackend small = smallBlocks(1);
        CudaBackend whole = GpuTests.openOrSkip();
        try (small; whole;
             WeightDelta blocks = small.openDelta(name, b, t, I, H);
             WeightDelta one = whole.openDelta(name, b, t, I, H)) {
            double[] exact = new double[I * H];
            new DeltaRows(name, b, t, I, H).forEachBlock((row0, n, values) -> System.arraycopy(values, 0, exact, row0 * H, n * H));
            assertArrayEquals(exact, assertInstanceOf(CudaWeightDelta.class, blocks).values().data(), "ΔW formed in 7 blocks over 4 threads");
            assertEquals(Double.doubleToLongBits(one.deltaSquared()), Double.doubleToLongBits(blocks.deltaSquared()),
                    "‖ΔW‖² summed per row, whatever the blocks: " + one.deltaSquared() + " against " + blocks.deltaSquared());
            assertTrue(small.deltaBytesOpen() > 0);
        }
    }

    @Test
    void aNonFiniteValueInALaterBlockIsNamedAsTheCpuEngineNamesIt() throws Exception {
        String name = proj(0, "gate_proj");
        Path[] m = models(0, "gate_proj");
        TensorSource b = source(m[0], name);
        TensorSource t = source(m[2], name);
        try (CudaBackend small = smallBlocks(1)) {
            ExtractException onGpu = assertThrows(ExtractException.class, () -> small.openDelta(name, b, t, I, H).close());
            ExtractException onCpu = assertThrows(ExtractException.class, () -> CpuWeightDelta.open(name, b, t, I, H, 1).close());
            assertEquals(onCpu.getMessage(), onGpu.getMessage());
            assertTrue(onGpu.getMessage().contains("[700, 3]"), onGpu.getMessage());
            assertEquals(0, small.deltaBytesOpen(), "the bad weight's ΔW went back");
        }
    }

    /** extract --device cuda --json of the pair with the knobs given, as the CLI runs it; returns the report. */
    private JsonNode extract(Path[] m, Path out, String blockBytes, String streams, String svds) throws Exception {
        System.setProperty("loramerge.blockBytes", blockBytes);
        System.setProperty("loramerge.streams", streams);
        System.setProperty("loramerge.svds", svds);
        CliRun run = CliRun.of(() -> Main.run("extract", "--base", m[0].toString(), "--tuned", m[1].toString(), "--out", out.toString(),
                "--rank", "8", "--dtype", "f32", "--device", "cuda", "--json", "--quiet"));
        clearKnobs();
        assertEquals(0, run.code(), run::both);
        return new ObjectMapper().readTree(run.out());
    }

    @Test
    void severalWeightsFormedAheadAndDecomposedAtOnceWriteTheSameAdapterAsOneAtATime() throws Exception {
        GpuTests.openOrSkip().close();
        Path[] m = models(0, null);
        Path alone = dir.resolve("alone");
        Path together = dir.resolve("together");
        JsonNode a = extract(m, alone, String.valueOf(8 << 20), "1", "1");
        JsonNode b = extract(m, together, String.valueOf(1 << 20), "4", "4");
        assertEquals("cuda:0", b.get("svdDevice").asText());
        assertEquals(1, a.get("timing").get("decomposeThreads").asInt());
        assertEquals(4, b.get("timing").get("decomposeThreads").asInt(), "the knob reached the run: " + b.get("timing"));
        assertEquals(14, b.get("modules").size());
        assertArrayEquals(Files.readAllBytes(alone.resolve("adapter_model.safetensors")), Files.readAllBytes(together.resolve("adapter_model.safetensors")),
                "the same factors, bit for bit");
        assertEquals(Files.readString(alone.resolve("adapter_config.json")), Files.readString(together.resolve("adapter_config.json")));
        for (int i = 0; i < 14; i++) {
            assertEquals(a.get("modules").get(i).toString(), b.get("modules").get(i).toString(), "the report in target order, the same errors");
        }
        assertTrue(List.of("formDelta", "decompose", "compareOthers").contains(b.get("timing").get("bound").asText()), b.get("timing").toString());
    }

    /** ExtractRunner on {@code backend}, as the CLI runs it, into {@code out}. */
    private static ExtractReport run(CudaBackend backend, Path[] m, Path out) throws Exception {
        try (Checkpoint b = LoraMerge.openModel("--base", m[0], false);
             Checkpoint t = LoraMerge.openModel("--tuned", m[1], false);
             AtomicOutput output = AtomicOutput.create(out, false, List.of(m[0], m[1]))) {
            ExtractPlan plan = ExtractPlanner.plan(b, t, new ExtractOptions(null, false, 8, null, 256, ExtractOptions.Others.SAVE, DType.F32, "base"));
            return ExtractRunner.run(plan, backend, output, new ExtractRunner.Options(RandomizedSvd.Options.defaults(4), false),
                    new Progress(new PrintStream(PrintStream.nullOutputStream()), false, 0, 0, "extracting"));
        }
    }

    @Test
    void aBadWeightAmongThoseInFlightWritesNothingAndGivesBackEveryDeltasDeviceMemory() throws Exception {
        Path[] m = models(1, "k_proj");
        Path[] bad = {m[0], m[2]};
        Path[] good = {m[0], m[1]};
        try (CudaBackend backend = smallBlocks(3)) {
            Path out = dir.resolve("adapter");
            ExtractException e = assertThrows(ExtractException.class, () -> run(backend, bad, out));
            assertEquals(ExtractException.Reason.NON_FINITE, e.reason());
            assertTrue(e.getMessage().contains(proj(1, "k_proj")) && e.getMessage().contains("[700, 3]"), e.getMessage());
            assertFalse(Files.exists(out), "nothing written");
            try (var left = Files.list(dir)) {
                assertTrue(left.noneMatch(p -> p.getFileName().toString().startsWith(".adapter")), "no hidden folder left behind");
            }
            assertEquals(0, backend.deltaBytesOpen(), "every ΔW formed ahead or being decomposed was closed");
            // the engine is whole: the same backend extracts the clean pair, and gives everything back again
            ExtractReport report = run(backend, good, out);
            assertEquals(14, report.modules.size());
            assertEquals(3, report.timing.decomposeThreads());
            assertEquals(0, backend.deltaBytesOpen());
            assertTrue(Files.isRegularFile(out.resolve("adapter_model.safetensors")));
        }
    }
}
