package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertAll;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeSet;
import java.util.function.Consumer;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.linalg.HouseholderQr;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.Svd;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.DenseModels;
import org.loramerge.testutil.TinyModels;

/**
 * {@code loramerge extract} end to end: adapters recovered from merged models, the rank and energy
 * rules, what happens to changes LoRA cannot express, every layout (Linear, GPT-2 Conv1D, embedding),
 * the report, and bad input (exit 3, nothing written).
 */
class ExtractCliTest {
    static final String LLAMA = "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"tie_word_embeddings\": false}\n";
    static final String GPT2 = "{\"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"]}\n";
    static final int H = 24;
    static final int I = 48;
    static final int V = 64;
    private static final Pattern REMEDY = Pattern.compile("(?i)\\b(pass|fix|re-?export|check|use|choose)\\b");

    @TempDir
    Path dir;

    static String proj(int layer, String name) {
        return "model.layers." + layer + (name.endsWith("_proj") && !name.startsWith("up") && !name.startsWith("gate") && !name.startsWith("down")
                ? ".self_attn." : ".mlp.") + name;
    }

    /** A 2-layer Llama-shaped model with random values in {@code dtype}, q_proj with a bias. */
    static DenseModels llama(DType dtype, long seed) {
        Random r = new Random(seed);
        DenseModels m = new DenseModels();
        m.put("model.embed_tokens.weight", dtype, new long[] {V, H}, DenseModels.gaussian(V * H, 0.05, dtype, r));
        for (int l = 0; l < 2; l++) {
            for (String p : new String[] {"q_proj", "k_proj", "v_proj", "o_proj"}) {
                m.put(proj(l, p) + ".weight", dtype, new long[] {H, H}, DenseModels.gaussian(H * H, 0.05, dtype, r));
            }
            m.put(proj(l, "q_proj") + ".bias", dtype, new long[] {H}, DenseModels.gaussian(H, 0.05, dtype, r));
            m.put(proj(l, "gate_proj") + ".weight", dtype, new long[] {I, H}, DenseModels.gaussian(I * H, 0.05, dtype, r));
            m.put(proj(l, "up_proj") + ".weight", dtype, new long[] {I, H}, DenseModels.gaussian(I * H, 0.05, dtype, r));
            m.put(proj(l, "down_proj") + ".weight", dtype, new long[] {H, I}, DenseModels.gaussian(I * H, 0.05, dtype, r));
            double[] ones = new double[H];
            Arrays.fill(ones, 1.0);
            m.put("model.layers." + l + ".input_layernorm.weight", dtype, new long[] {H}, ones);
        }
        double[] ones = new double[H];
        Arrays.fill(ones, 1.0);
        m.put("model.norm.weight", dtype, new long[] {H}, ones);
        m.put("lm_head.weight", dtype, new long[] {V, H}, DenseModels.gaussian(V * H, 0.05, dtype, r));
        return m;
    }

    /** b·a for b [m, r], a [r, n], row-major. */
    static double[] product(double[] b, double[] a, int m, int r, int n) {
        double[] out = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int k = 0; k < r; k++) {
                for (int j = 0; j < n; j++) {
                    out[i * n + j] += b[i * r + k] * a[k * n + j];
                }
            }
        }
        return out;
    }

    static double[] transpose(double[] x, int m, int n) {
        double[] t = new double[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                t[j * m + i] = x[i * n + j];
            }
        }
        return t;
    }

    static double norm(double[] x) {
        double s = 0;
        for (double v : x) {
            s += v * v;
        }
        return Math.sqrt(s);
    }

    static double[] minus(double[] a, double[] b) {
        double[] d = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            d[i] = a[i] - b[i];
        }
        return d;
    }

    /** tuned = base + delta, each element rounded once to the model's dtype. */
    static double[] plus(double[] w, double[] delta, DType dtype) {
        FloatFormat f = FloatFormat.of(dtype);
        double[] out = new double[w.length];
        for (int i = 0; i < w.length; i++) {
            out[i] = f.round(w[i] + delta[i]);
        }
        return out;
    }

    /** extract on the CPU engine (the GPU engine's own tests are the gpu-tagged CudaExtractTest). */
    static CliRun extract(Path base, Path tuned, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("extract", "--base", base.toString(), "--tuned", tuned.toString(), "--out", out.toString(),
                "--quiet", "--threads", "2", "--device", "cpu"));
        args.addAll(Arrays.asList(extra));
        return CliRun.of(() -> Main.run(args.toArray(new String[0])));
    }

    static JsonNode json(CliRun r) throws Exception {
        return new ObjectMapper().readTree(r.out());
    }

    static JsonNode module(JsonNode report, String name) {
        for (JsonNode m : report.get("modules")) {
            if (m.get("name").asText().equals(name)) {
                return m;
            }
        }
        return null;
    }

    /** ΔW = lora_B·lora_A (scale alpha / r, which extract makes 1) of a Linear module of an adapter folder, as [rows, cols]. */
    static double[] linearDelta(Map<String, double[]> adapter, String module, int rows, int cols, int rank) {
        String p = TinyModels.PEFT_PREFIX + module;
        return product(adapter.get(p + ".lora_B.weight"), adapter.get(p + ".lora_A.weight"), rows, rank, cols);
    }

    private static void assertNothingWritten(Path out) {
        assertFalse(Files.exists(out), out + " exists after a failed extract");
        List<String> left = TinyModels.list(out.getParent()).stream().filter(n -> n.contains(".loramerge-")).toList();
        assertEquals(List.of(), left, "leftover folders beside " + out);
    }

    private static void assertBadInput(CliRun r, Path out, String... named) {
        assertAll(
                () -> assertEquals(ExitCodes.BAD_INPUT, r.code(), r::both),
                () -> assertNothingWritten(out),
                () -> assertTrue(REMEDY.matcher(r.err()).find(), () -> "stderr does not say what to do:\n" + r.err()),
                () -> {
                    for (String n : named) {
                        assertTrue(r.err().contains(n), () -> "stderr does not name " + n + ":\n" + r.err());
                    }
                });
    }

    // ------------------------------------------------------------------ round trip

    @Test
    void extractOfAMergedAdapterRecoversItsDeltaUpToTheMergedModelsRounding() throws Exception {
        DenseModels base = llama(DType.BF16, 1);
        Path basePath = base.write(dir.resolve("base"), LLAMA);
        int r = 4;
        Random rnd = new Random(2);
        List<TinyModels.Tensor> pairs = new ArrayList<>();
        String[] modules = {proj(0, "q_proj"), proj(1, "v_proj"), proj(0, "down_proj")};
        int[][] shapes = {{H, H}, {H, H}, {H, I}};
        for (int k = 0; k < modules.length; k++) {
            pairs.add(new TinyModels.Tensor(TinyModels.PEFT_PREFIX + modules[k] + ".lora_A.weight", DType.F32, new long[] {r, shapes[k][1]},
                    TinyModels.f32(DenseModels.gaussian(r * shapes[k][1], 0.1, DType.F32, rnd))));
            pairs.add(new TinyModels.Tensor(TinyModels.PEFT_PREFIX + modules[k] + ".lora_B.weight", DType.F32, new long[] {shapes[k][0], r},
                    TinyModels.f32(DenseModels.gaussian(shapes[k][0] * r, 0.1, DType.F32, rnd))));
        }
        Path adapter = TinyModels.writeAdapter(dir.resolve("adapter"), TinyModels.loraConfig(r, 8, "[\"q_proj\", \"v_proj\", \"down_proj\"]", ""), pairs);
        Path tuned = dir.resolve("tuned");
        CliRun merged = CliRun.of(() -> Main.run("merge", "--base", basePath.toString(), "--adapter", adapter.toString(), "--out", tuned.toString(),
                "--device", "cpu", "--quiet"));
        assertEquals(0, merged.code(), merged::both);

        Path out = dir.resolve("extracted");
        CliRun x = extract(basePath, tuned, out, "--rank", "4", "--dtype", "f32", "--json");
        assertEquals(0, x.code(), x::both);
        Map<String, double[]> original = DenseModels.readFile(adapter.resolve("adapter_model.safetensors"));
        Map<String, double[]> extracted = DenseModels.readFile(out.resolve("adapter_model.safetensors"));
        Map<String, double[]> t = DenseModels.read(tuned);
        AdapterConfig config = AdapterConfig.read(out.resolve("adapter_config.json"));
        for (int k = 0; k < modules.length; k++) {
            int m = shapes[k][0];
            int n = shapes[k][1];
            assertEquals(1.0, config.scaleFor(modules[k]), "extract writes scale 1");
            double[] truth = linearDelta(original, modules[k], m, n, r);
            for (int i = 0; i < truth.length; i++) {
                truth[i] *= 2; // the adapter's scale, 8 / 4
            }
            double[] rounding = minus(minus(t.get(modules[k] + ".weight"), base.values(modules[k] + ".weight")), truth);
            double[] got = linearDelta(extracted, modules[k], m, n, r);
            double error = norm(minus(got, truth));
            // Eckart–Young: the best rank-r fit of ΔW + ε is within ‖ε‖ of it, and so within 2‖ε‖ of ΔW
            assertTrue(error <= 2 * norm(rounding), modules[k] + ": ‖extracted − ΔW‖ = " + error + " but the merge rounded by ‖ε‖ = " + norm(rounding));
            assertTrue(error < 0.02 * norm(truth), modules[k] + ": the delta itself is recovered");
        }
        Map<String, double[]> keys = extracted;
        assertEquals(6, keys.size(), () -> "one pair per changed module, nothing else: " + keys.keySet());
        JsonNode report = json(x);
        assertEquals(3, report.get("modulesExtracted").asInt());
        List<String> unchanged = new ArrayList<>();
        report.get("unchangedModules").forEach(n -> unchanged.add(n.asText()));
        assertTrue(unchanged.contains(proj(0, "k_proj")) && unchanged.contains(proj(1, "down_proj")), unchanged::toString);
        assertEquals(0, report.get("changes").size(), "no other tensor changed");
        assertEquals(new TreeSet<>(List.of(modules)), new TreeSet<>(targetModules(out)));
        assertEquals(List.of(), config.modulesToSave());
    }

    static List<String> targetModules(Path adapterDir) throws Exception {
        List<String> out = new ArrayList<>();
        new ObjectMapper().readTree(adapterDir.resolve("adapter_config.json").toFile()).get("target_modules").forEach(n -> out.add(n.asText()));
        return out;
    }

    @Test
    void sameInputsGiveTheSameAdapterBytes() throws Exception {
        DenseModels base = llama(DType.BF16, 3);
        DenseModels tuned = base.copy();
        String w = proj(1, "o_proj") + ".weight";
        tuned.put(w, DType.BF16, new long[] {H, H}, plus(base.values(w), DenseModels.gaussian(H * H, 0.01, DType.F32, new Random(4)), DType.BF16));
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = tuned.write(dir.resolve("tuned"), LLAMA);
        assertEquals(0, extract(b, t, dir.resolve("a1"), "--rank", "5").code());
        Path a2 = dir.resolve("a2");
        assertEquals(0, CliRun.of(() -> Main.run("extract", "--base", b.toString(), "--tuned", t.toString(), "--out", a2.toString(), "--rank", "5",
                "--threads", "1", "--quiet", "--device", "cpu")).code());
        assertEquals(TinyModels.hashTree(dir.resolve("a1")), TinyModels.hashTree(dir.resolve("a2")));
    }

    // ------------------------------------------------------------------ ranks

    /** tuned = base + U·diag(σ)·Vᵀ with orthonormal U, V (F32, so the rounding is far below the spectrum). */
    static double[] spectrum(int m, int n, double[] sigma, long seed) {
        Matrix u = HouseholderQr.of(gaussianMatrix(m, sigma.length, seed)).q();
        Matrix v = HouseholderQr.of(gaussianMatrix(n, sigma.length, seed + 1)).q();
        return new Svd(u, sigma, v.transpose()).reconstruct().data();
    }

    static Matrix gaussianMatrix(int m, int n, long seed) {
        Random r = new Random(seed);
        Matrix g = Matrix.zeros(m, n);
        for (int i = 0; i < g.data().length; i++) {
            g.data()[i] = r.nextGaussian();
        }
        return g;
    }

    @Test
    void energyPicksPerModuleTheSmallestRankThatKeepsTheShareAndWritesARankPattern() throws Exception {
        DenseModels base = llama(DType.F32, 5);
        DenseModels tuned = base.copy();
        String q0 = proj(0, "q_proj");
        String q1 = proj(1, "q_proj");
        String up = proj(0, "up_proj");
        // energies 1, .25, .0625, .01: 90% needs rank 2; 1, .0025: rank 1; ten equal values: rank 9
        tuned.put(q0 + ".weight", DType.F32, new long[] {H, H}, plus(base.values(q0 + ".weight"), spectrum(H, H, new double[] {1, 0.5, 0.25, 0.1}, 6), DType.F32));
        tuned.put(q1 + ".weight", DType.F32, new long[] {H, H}, plus(base.values(q1 + ".weight"), spectrum(H, H, new double[] {1, 0.05}, 7), DType.F32));
        double[] flat = new double[10];
        Arrays.fill(flat, 0.3);
        tuned.put(up + ".weight", DType.F32, new long[] {I, H}, plus(base.values(up + ".weight"), spectrum(I, H, flat, 8), DType.F32));
        Path out = dir.resolve("adapter");
        CliRun x = extract(base.write(dir.resolve("base"), LLAMA), tuned.write(dir.resolve("tuned"), LLAMA), out, "--energy", "0.9", "--max-rank", "16",
                "--json");
        assertEquals(0, x.code(), x::both);
        AdapterConfig config = AdapterConfig.read(out.resolve("adapter_config.json"));
        assertEquals(2, config.rankFor(q0));
        assertEquals(1, config.rankFor(q1));
        assertEquals(9, config.rankFor(up));
        for (String m : List.of(q0, q1, up)) {
            assertEquals(1.0, config.scaleFor(m), m + ": alpha follows the rank, so the scale is 1");
        }
        JsonNode report = json(x);
        assertEquals(0.9, report.get("energy").asDouble());
        assertEquals(1.25 / 1.3225, module(report, q0).get("energyKept").asDouble(), 1e-6);
        assertTrue(module(report, up).get("energyKept").asDouble() >= 0.9);
        Map<String, double[]> a = DenseModels.readFile(out.resolve("adapter_model.safetensors"));
        assertEquals(2 * H, a.get(TinyModels.PEFT_PREFIX + q0 + ".lora_A.weight").length, "lora_A of q_proj 0 is [2, 24]");
    }

    @Test
    void checkOptimalReportsTheRatioToTheEckartYoungOptimumWithinOnePercent() throws Exception {
        DenseModels base = llama(DType.F32, 9);
        DenseModels tuned = base.copy();
        Random rnd = new Random(10);
        for (String p : new String[] {"q_proj", "down_proj", "gate_proj"}) {
            String w = proj(1, p) + ".weight";
            int rows = p.equals("down_proj") ? H : p.equals("q_proj") ? H : I;
            int cols = p.equals("down_proj") ? I : H;
            double[] sigma = new double[6];
            for (int i = 0; i < sigma.length; i++) {
                sigma[i] = 1.0 / (1 + i);
            }
            double[] delta = spectrum(rows, cols, sigma, 11 + p.length());
            for (int i = 0; i < delta.length; i++) {
                delta[i] += 0.002 * rnd.nextGaussian(); // small full-rank noise
            }
            tuned.put(w, DType.F32, new long[] {rows, cols}, plus(base.values(w), delta, DType.F32));
        }
        CliRun x = extract(base.write(dir.resolve("base"), LLAMA), tuned.write(dir.resolve("tuned"), LLAMA), dir.resolve("a"), "--rank", "6",
                "--dtype", "f32", "--check-optimal", "--json");
        assertEquals(0, x.code(), x::both);
        JsonNode report = json(x);
        assertEquals(3, report.get("modules").size());
        for (JsonNode m : report.get("modules")) {
            double ratio = m.get("optimalRatio").asDouble();
            assertTrue(ratio >= 1 - 1e-6 && ratio <= 1.01, m.toString());
            double err = m.get("relativeError").asDouble();
            assertEquals(Math.sqrt(1 - m.get("energyKept").asDouble()), m.get("truncationError").asDouble(), 1e-9, m.toString());
            assertEquals(m.get("truncationError").asDouble(), err, 1e-5, "f32 factors add little to the SVD's error: " + m);
        }
    }

    // ------------------------------------------------------------------ what LoRA cannot express

    /** A base and a tuned model in which q_proj 0 (low rank), its bias and input_layernorm 1 changed. */
    private Path[] normAndBiasChanged() throws Exception {
        DenseModels base = llama(DType.F32, 12);
        DenseModels tuned = base.copy();
        String q = proj(0, "q_proj");
        tuned.put(q + ".weight", DType.F32, new long[] {H, H}, plus(base.values(q + ".weight"), spectrum(H, H, new double[] {0.5, 0.2}, 13), DType.F32));
        double[] bias = base.values(q + ".bias").clone();
        bias[3] += 0.25;
        tuned.put(q + ".bias", DType.F32, new long[] {H}, bias);
        double[] norm = base.values("model.layers.1.input_layernorm.weight").clone();
        norm[0] = 1.5;
        tuned.put("model.layers.1.input_layernorm.weight", DType.F32, new long[] {H}, norm);
        return new Path[] {base.write(dir.resolve("base"), LLAMA), tuned.write(dir.resolve("tuned"), LLAMA)};
    }

    @Test
    void changedNormAndBiasAreSavedThePeftWayAndMergeBackExactly() throws Exception {
        Path[] m = normAndBiasChanged();
        Path out = dir.resolve("adapter");
        CliRun x = extract(m[0], m[1], out, "--rank", "2", "--dtype", "f32", "--json");
        assertEquals(0, x.code(), x::both);
        Map<String, double[]> a = DenseModels.readFile(out.resolve("adapter_model.safetensors"));
        String q = proj(0, "q_proj");
        assertTrue(a.containsKey(TinyModels.PEFT_PREFIX + q + ".base_layer.bias"), a.keySet()::toString);
        assertTrue(a.containsKey(TinyModels.PEFT_PREFIX + "model.layers.1.input_layernorm.weight"), a.keySet()::toString);
        AdapterConfig config = AdapterConfig.read(out.resolve("adapter_config.json"));
        assertEquals("lora_only", config.bias());
        assertEquals(List.of("model.layers.1.input_layernorm"), config.modulesToSave());
        JsonNode report = json(x);
        assertEquals(2, report.get("changes").size());

        Path merged = dir.resolve("merged");
        CliRun mr = CliRun.of(() -> Main.run("merge", "--base", m[0].toString(), "--adapter", out.toString(), "--out", merged.toString(),
                "--device", "cpu", "--quiet"));
        assertEquals(0, mr.code(), mr::both);
        Map<String, double[]> back = DenseModels.read(merged);
        Map<String, double[]> t = DenseModels.read(m[1]);
        assertTrue(Arrays.equals(t.get(q + ".bias"), back.get(q + ".bias")), "the bias comes back exactly");
        assertTrue(Arrays.equals(t.get("model.layers.1.input_layernorm.weight"), back.get("model.layers.1.input_layernorm.weight")));
        Map<String, double[]> b = DenseModels.read(m[0]);
        double[] delta = minus(t.get(q + ".weight"), b.get(q + ".weight"));
        assertTrue(norm(minus(back.get(q + ".weight"), t.get(q + ".weight"))) < 1e-5 * norm(delta), "the rank-2 change comes back");
    }

    @Test
    void reportedChangesAreLeftOutOfTheAdapterAndListed() throws Exception {
        Path[] m = normAndBiasChanged();
        Path out = dir.resolve("adapter");
        CliRun x = CliRun.of(() -> Main.run("extract", "--base", m[0].toString(), "--tuned", m[1].toString(), "--out", out.toString(),
                "--rank", "2", "--others", "report", "--json", "--threads", "1"));
        assertEquals(0, x.code(), x::both);
        Map<String, double[]> a = DenseModels.readFile(out.resolve("adapter_model.safetensors"));
        assertEquals(2, a.size(), () -> "only q_proj's pair: " + a.keySet());
        JsonNode report = json(x);
        List<String> reported = new ArrayList<>();
        report.get("changes").forEach(c -> {
            assertEquals("reported", c.get("action").asText());
            reported.add(c.get("tensor").asText());
        });
        assertEquals(List.of(proj(0, "q_proj") + ".bias", "model.layers.1.input_layernorm.weight"), reported);
        assertTrue(x.err().contains("model.layers.1.input_layernorm.weight") && x.err().contains("not in the adapter"), x::both);
    }

    @Test
    void changedOutputHeadIsSavedWholeUnlessEmbeddingsAreAskedFor() throws Exception {
        DenseModels base = llama(DType.F32, 14);
        DenseModels tuned = base.copy();
        tuned.put("lm_head.weight", DType.F32, new long[] {V, H}, plus(base.values("lm_head.weight"), spectrum(V, H, new double[] {0.4, 0.1}, 15), DType.F32));
        tuned.put("model.embed_tokens.weight", DType.F32, new long[] {V, H},
                plus(base.values("model.embed_tokens.weight"), spectrum(V, H, new double[] {0.3, 0.2, 0.1}, 16), DType.F32));
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = tuned.write(dir.resolve("tuned"), LLAMA);

        Path whole = dir.resolve("whole");
        assertEquals(0, extract(b, t, whole, "--rank", "3").code());
        AdapterConfig c1 = AdapterConfig.read(whole.resolve("adapter_config.json"));
        assertEquals(List.of("model.embed_tokens", "lm_head"), c1.modulesToSave(), "all-linear leaves out embeddings and the head, as PEFT");

        Path low = dir.resolve("low");
        CliRun x = extract(b, t, low, "--rank", "3", "--embeddings", "--dtype", "f32");
        assertEquals(0, x.code(), x::both);
        Map<String, double[]> a = DenseModels.readFile(low.resolve("adapter_model.safetensors"));
        assertEquals(3 * V, a.get(TinyModels.PEFT_PREFIX + "model.embed_tokens.lora_embedding_A").length, "lora_embedding_A is [r, vocab]");
        assertEquals(H * 3, a.get(TinyModels.PEFT_PREFIX + "model.embed_tokens.lora_embedding_B").length, "lora_embedding_B is [dim, r]");
        assertNotNull(a.get(TinyModels.PEFT_PREFIX + "lm_head.lora_A.weight"));
        Path merged = dir.resolve("merged");
        assertEquals(0, CliRun.of(() -> Main.run("merge", "--base", b.toString(), "--adapter", low.toString(), "--out", merged.toString(),
                "--device", "cpu", "--quiet")).code());
        Map<String, double[]> back = DenseModels.read(merged);
        for (String w : List.of("lm_head.weight", "model.embed_tokens.weight")) {
            double[] delta = minus(tuned.values(w), base.values(w));
            assertTrue(norm(minus(back.get(w), tuned.values(w))) < 1e-5 * norm(delta), w + " merges back to the tuned values");
        }
    }

    @Test
    void gpt2Conv1dWeightsGetFanInFanOutFactorsThatMergeBack() throws Exception {
        int h = 16;
        Random r = new Random(17);
        DenseModels base = new DenseModels();
        base.put("transformer.wte.weight", DType.F32, new long[] {V, h}, DenseModels.gaussian(V * h, 0.05, DType.F32, r));
        base.put("transformer.h.0.attn.c_attn.weight", DType.F32, new long[] {h, 3 * h}, DenseModels.gaussian(3 * h * h, 0.05, DType.F32, r));
        base.put("transformer.h.0.attn.c_attn.bias", DType.F32, new long[] {3 * h}, DenseModels.gaussian(3 * h, 0.05, DType.F32, r));
        base.put("transformer.h.0.mlp.c_fc.weight", DType.F32, new long[] {h, 4 * h}, DenseModels.gaussian(4 * h * h, 0.05, DType.F32, r));
        DenseModels tuned = base.copy();
        String w = "transformer.h.0.attn.c_attn.weight";
        // GPT-2's Conv1D stores [in, out]: the change is (B·A)ᵀ of a rank-2 pair
        tuned.put(w, DType.F32, new long[] {h, 3 * h}, plus(base.values(w), spectrum(h, 3 * h, new double[] {0.5, 0.25}, 18), DType.F32));
        Path b = base.write(dir.resolve("base"), GPT2);
        Path t = tuned.write(dir.resolve("tuned"), GPT2);
        Path out = dir.resolve("adapter");
        CliRun x = extract(b, t, out, "--rank", "2", "--dtype", "f32");
        assertEquals(0, x.code(), x::both);
        Map<String, double[]> a = DenseModels.readFile(out.resolve("adapter_model.safetensors"));
        assertEquals(2 * h, a.get(TinyModels.PEFT_PREFIX + "transformer.h.0.attn.c_attn.lora_A.weight").length, "lora_A is [r, in]");
        assertEquals(3 * h * 2, a.get(TinyModels.PEFT_PREFIX + "transformer.h.0.attn.c_attn.lora_B.weight").length, "lora_B is [out, r]");
        assertTrue(new ObjectMapper().readTree(out.resolve("adapter_config.json").toFile()).get("fan_in_fan_out").asBoolean());
        assertEquals(List.of("transformer.h.0.attn.c_attn"), targetModules(out), "the embedding is not all-linear");
        Path merged = dir.resolve("merged");
        assertEquals(0, CliRun.of(() -> Main.run("merge", "--base", b.toString(), "--adapter", out.toString(), "--out", merged.toString(),
                "--device", "cpu", "--quiet")).code());
        double[] delta = minus(tuned.values(w), base.values(w));
        assertTrue(norm(minus(DenseModels.read(merged).get(w), tuned.values(w))) < 1e-5 * norm(delta));
    }

    // ------------------------------------------------------------------ bad input: exit 3, nothing written

    private Path[] pair(Consumer<DenseModels> changeTuned, String tunedConfig) throws Exception {
        DenseModels base = llama(DType.BF16, 20);
        DenseModels tuned = base.copy();
        String w = proj(0, "k_proj") + ".weight";
        tuned.put(w, DType.BF16, new long[] {H, H}, plus(base.values(w), DenseModels.gaussian(H * H, 0.01, DType.F32, new Random(21)), DType.BF16));
        changeTuned.accept(tuned);
        return new Path[] {base.write(dir.resolve("base"), LLAMA), tuned.write(dir.resolve("tuned"), tunedConfig)};
    }

    @Test
    void tunedModelWithDifferentTensorsIsBadInputAndWritesNothing() throws Exception {
        Path[] m = pair(t -> t.remove("model.norm.weight"), LLAMA);
        Path out = dir.resolve("adapter");
        assertBadInput(extract(m[0], m[1], out), out, "model.norm.weight", m[1].toString());
    }

    @Test
    void tensorOfAnotherShapeIsBadInputAndWritesNothing() throws Exception {
        Path[] m = pair(t -> t.put(proj(1, "up_proj") + ".weight", DType.BF16, new long[] {I, H + 1}, new double[I * (H + 1)]), LLAMA);
        Path out = dir.resolve("adapter");
        assertBadInput(extract(m[0], m[1], out), out, proj(1, "up_proj") + ".weight", "[48, 25]");
    }

    @Test
    void otherArchitectureIsBadInputAndWritesNothing() throws Exception {
        Path[] m = pair(t -> { }, "{\"model_type\": \"mistral\", \"architectures\": [\"MistralForCausalLM\"]}\n");
        Path out = dir.resolve("adapter");
        assertBadInput(extract(m[0], m[1], out), out, "mistral", m[1].toString());
    }

    @Test
    void nanInTheTunedModelIsBadInputAndWritesNothing() throws Exception {
        String w = proj(1, "o_proj") + ".weight";
        Path[] m = pair(t -> t.values(w)[37] = Double.NaN, LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(m[0], m[1], out);
        assertBadInput(r, out, w, "NaN", m[1].resolve("model.safetensors").toString());
    }

    @Test
    void infinityInANormOfTheBaseIsBadInputAndWritesNothing() throws Exception {
        DenseModels base = llama(DType.BF16, 22);
        DenseModels tuned = base.copy();
        String w = proj(0, "k_proj") + ".weight";
        tuned.put(w, DType.BF16, new long[] {H, H}, plus(base.values(w), DenseModels.gaussian(H * H, 0.01, DType.F32, new Random(23)), DType.BF16));
        base.values("model.norm.weight")[2] = Double.POSITIVE_INFINITY;
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path out = dir.resolve("adapter");
        assertBadInput(extract(b, tuned.write(dir.resolve("tuned"), LLAMA), out), out, "model.norm.weight", "Infinity");
    }

    @Test
    void ofTwoBadTensorsComparedAtOnceTheFirstInTheCheckpointIsReported() throws Exception {
        DenseModels base = llama(DType.BF16, 27);
        DenseModels tuned = base.copy();
        String w = proj(0, "q_proj") + ".weight";
        tuned.put(w, DType.BF16, new long[] {H, H}, plus(base.values(w), DenseModels.gaussian(H * H, 0.01, DType.F32, new Random(28)), DType.BF16));
        // the large embedding comes first in name order; the small norm, which a comparison finishes sooner, last
        base.values("model.embed_tokens.weight")[V * H - 1] = Double.POSITIVE_INFINITY;
        base.values("model.norm.weight")[1] = Double.POSITIVE_INFINITY;
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(b, tuned.write(dir.resolve("tuned"), LLAMA), out);
        assertBadInput(r, out, "model.embed_tokens.weight", "Infinity");
        assertTrue(!r.err().contains("model.norm.weight"), r::both);
    }

    @Test
    void nanInATargetWeightIsReportedBeforeInfinityInANormThatIsComparedMeanwhile() throws Exception {
        DenseModels base = llama(DType.BF16, 25);
        DenseModels tuned = base.copy();
        String w = proj(1, "v_proj") + ".weight";
        double[] changed = plus(base.values(w), DenseModels.gaussian(H * H, 0.01, DType.F32, new Random(26)), DType.BF16);
        changed[5] = Double.NaN;
        tuned.put(w, DType.BF16, new long[] {H, H}, changed);
        base.values("model.norm.weight")[2] = Double.POSITIVE_INFINITY;
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(b, tuned.write(dir.resolve("tuned"), LLAMA), out);
        assertBadInput(r, out, w, "NaN");
        assertTrue(!r.err().contains("model.norm.weight"), r::both);
    }

    @Test
    void identicalModelsAreBadInputWithNothingToExtract() throws Exception {
        DenseModels base = llama(DType.BF16, 24);
        Path b = base.write(dir.resolve("base"), LLAMA);
        Path t = base.write(dir.resolve("tuned"), LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(b, t, out);
        assertBadInput(r, out, "nothing to extract");
    }

    @Test
    void rankAndEnergyTogetherAreAUsageError() throws Exception {
        Path[] m = pair(t -> { }, LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(m[0], m[1], out, "--rank", "4", "--energy", "0.9");
        assertEquals(ExitCodes.USAGE, r.code(), r::both);
        assertNothingWritten(out);
        CliRun unknown = extract(m[0], m[1], out, "--target", "no_such_proj");
        assertEquals(ExitCodes.USAGE, unknown.code(), unknown::both);
        assertTrue(unknown.err().contains("no_such_proj"), unknown::both);
        assertNothingWritten(out);
    }

    @Test
    void reportSaysWhereTheSvdsRanAndAnUnknownDeviceIsAUsageError() throws Exception {
        Path[] m = pair(t -> { }, LLAMA);
        Path out = dir.resolve("adapter");
        CliRun cpu = CliRun.of(() -> Main.run("extract", "--base", m[0].toString(), "--tuned", m[1].toString(), "--out", out.toString(),
                "--rank", "2", "--device", "cpu", "--json", "--threads", "1"));
        assertEquals(0, cpu.code(), cpu::both);
        assertEquals("cpu", json(cpu).get("svdDevice").asText());
        assertTrue(cpu.err().contains("SVDs on cpu"), cpu::both);
        // where the time went: each part is within the run (the threads overlap), and weights were formed and decomposed
        double seconds = json(cpu).get("seconds").asDouble();
        com.fasterxml.jackson.databind.JsonNode timing = json(cpu).get("timing");
        for (String part : new String[] {"formDelta", "waitForDelta", "decompose", "compareOthers", "write", "waitForRoom", "waitForCompare"}) {
            double v = timing.get(part).asDouble(-1);
            assertTrue(v >= 0 && v <= seconds, part + " = " + v + " of a " + seconds + " s run: " + timing);
        }
        assertTrue(timing.get("formDelta").asDouble() > 0 && timing.get("decompose").asDouble() > 0, timing.toString());
        double svd = timing.get("decomposeSvd").asDouble(-1);
        assertTrue(svd > 0 && svd <= timing.get("decompose").asDouble(), "the SVDs' part of decomposing: " + timing);
        assertEquals(1, timing.get("decomposeThreads").asInt(), "the CPU engine's SVD uses every core for one weight");
        assertTrue(List.of("formDelta", "decompose", "compareOthers").contains(timing.get("bound").asText()), "the stage that bounds the run: " + timing);
        Path other = dir.resolve("other");
        CliRun bad = CliRun.of(() -> Main.run("extract", "--base", m[0].toString(), "--tuned", m[1].toString(), "--out", other.toString(),
                "--rank", "2", "--device", "tpu"));
        assertEquals(ExitCodes.USAGE, bad.code(), bad::both);
        assertTrue(bad.err().contains("--device tpu"), bad::both);
        assertNothingWritten(other);
    }

    @Test
    void namedTargetsAreTheOnlyFactorsAndOtherChangedWeightsAreSavedWhole() throws Exception {
        Path[] m = pair(t -> { }, LLAMA);
        Path out = dir.resolve("adapter");
        CliRun r = extract(m[0], m[1], out, "--target", "q_proj,v_proj", "--json");
        assertEquals(0, r.code(), r::both);
        assertEquals(0, json(r).get("modulesExtracted").asInt(), "q_proj and v_proj did not change");
        assertEquals(List.of(proj(0, "k_proj")), AdapterConfig.read(out.resolve("adapter_config.json")).modulesToSave(),
                "the changed k_proj is not a target: saved whole");
        assertNull(DenseModels.readFile(out.resolve("adapter_model.safetensors")).get(TinyModels.PEFT_PREFIX + proj(0, "q_proj") + ".lora_A.weight"));
    }
}
