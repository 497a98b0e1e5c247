package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.cli.ExtractCliTest.H;
import static org.loramerge.cli.ExtractCliTest.LLAMA;
import static org.loramerge.cli.ExtractCliTest.proj;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.DenseModels;
import org.loramerge.testutil.TinyModels;

/**
 * {@code loramerge unmerge}: W = W' − s·B·A rounded once, measured against the original base; what
 * a merge destroys (DoRA's norm, replaced tensors, token rows, a tied head's delta) refused unless
 * the base is given; bad input exit 3 and nothing written.
 */
class UnmergeCliTest {
    @TempDir
    Path dir;

    private Path base;
    private DenseModels baseModel;

    /** lora_A [r, in], lora_B [out, r] for {@code module}, values N(0, std²) in F32. */
    static List<TinyModels.Tensor> pair(String module, int r, int in, int out, double std, Random rnd) {
        return List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + module + ".lora_A.weight", DType.F32, new long[] {r, in},
                        TinyModels.f32(DenseModels.gaussian(r * in, std, DType.F32, rnd))),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + module + ".lora_B.weight", DType.F32, new long[] {out, r},
                        TinyModels.f32(DenseModels.gaussian(out * r, std, DType.F32, rnd))));
    }

    private Path adapter(String name, String extraConfig, List<TinyModels.Tensor> extraTensors, double std) {
        Random rnd = new Random(name.hashCode());
        List<TinyModels.Tensor> t = new ArrayList<>();
        t.addAll(pair(proj(0, "q_proj"), 4, H, H, std, rnd));
        t.addAll(pair(proj(1, "v_proj"), 4, H, H, std, rnd));
        t.addAll(extraTensors);
        return TinyModels.writeAdapter(dir.resolve(name), TinyModels.loraConfig(4, 8, "[\"q_proj\", \"v_proj\"]", extraConfig), t);
    }

    private Path merge(Path adapter, String name) {
        Path out = dir.resolve(name);
        CliRun r = CliRun.of(() -> Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet"));
        assertEquals(0, r.code(), r::both);
        return out;
    }

    private static CliRun unmerge(Path merged, Path adapter, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("unmerge", "--merged", merged.toString(), "--adapter", adapter.toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet", "--json"));
        args.addAll(Arrays.asList(extra));
        return CliRun.of(() -> Main.run(args.toArray(new String[0])));
    }

    private void writeBase() throws Exception {
        baseModel = ExtractCliTest.llama(DType.BF16, 40);
        base = baseModel.write(dir.resolve("base"), LLAMA);
    }

    private static void assertNothingWritten(Path out) {
        assertFalse(Files.exists(out), out + " exists after a failed unmerge");
        assertEquals(List.of(), TinyModels.list(out.getParent()).stream().filter(n -> n.contains(".loramerge-")).toList());
    }

    /**
     * The merge rounded W + ΔW once at the spacing of W', the unmerge rounds W' − ΔW once at the
     * spacing of the result: |B' − B| ≤ |B' − x| + |x − B| ≤ 2·|x − B| ≤ ulp(W'), with x = W' − ΔW
     * exact. So every element is within one ulp of its merged value, and within one ulp of the
     * original wherever W' is not in a coarser binade than W; where ΔW dwarfs W the merge itself
     * rounded W away, and no unmerge can bring those bits back.
     */
    @Test
    void unmergeOfAnExactMergeIsWithinOneUlpOfTheMergedValueFromTheBase() throws Exception {
        writeBase();
        for (double std : new double[] {0.2, 0.02}) { // ΔW of the size of W, and far below it
            Path a = adapter("adapter-" + std, "", List.of(), std);
            Path merged = merge(a, "merged-" + std);
            Path out = dir.resolve("unmerged-" + std);
            CliRun r = unmerge(merged, a, out, "--base", base.toString());
            assertEquals(0, r.code(), r::both);
            JsonNode d = new ObjectMapper().readTree(r.out()).get("distanceToBase");
            assertEquals(2, d.get("tensors").size(), "q_proj 0 and v_proj 1 were unmerged");
            assertEquals(2L * H * H, d.get("elements").asLong());
            assertTrue(d.get("worstMergedUlp").asDouble() <= 1, d::toString);
            Map<String, double[]> back = DenseModels.read(out);
            Map<String, double[]> w = DenseModels.read(merged);
            long sameSpacing = 0;
            for (String t : List.of(proj(0, "q_proj") + ".weight", proj(1, "v_proj") + ".weight")) {
                double[] b = baseModel.values(t);
                for (int i = 0; i < b.length; i++) {
                    double diff = Math.abs(back.get(t)[i] - b[i]);
                    assertTrue(diff <= FloatFormat.BF16.ulp(w.get(t)[i]), t + "[" + i + "]");
                    if (FloatFormat.BF16.ulp(w.get(t)[i]) <= FloatFormat.BF16.ulp(b[i])) {
                        sameSpacing++;
                        assertTrue(diff <= FloatFormat.BF16.ulp(b[i]), t + "[" + i + "] is more than 1 ulp from the original");
                    }
                }
            }
            assertTrue(sameSpacing > (std < 0.1 ? 2 * H * H * 9 / 10 : 0), "elements that keep their spacing: " + sameSpacing);
            for (Map.Entry<String, double[]> e : baseModel.all().entrySet()) {
                if (!e.getKey().equals(proj(0, "q_proj") + ".weight") && !e.getKey().equals(proj(1, "v_proj") + ".weight")) {
                    assertArrayEquals(e.getValue(), back.get(e.getKey()), e.getKey() + " was not adapted and comes back as it was");
                }
            }
            // without --base the same values: the base only adds the measurement
            Path alone = dir.resolve("alone-" + std);
            assertEquals(0, unmerge(merged, a, alone).code());
            assertEquals(TinyModels.hashTree(out).get("model.safetensors"), TinyModels.hashTree(alone).get("model.safetensors"));
        }
    }

    @Test
    void doraIsRefusedWithTheReasonAndTakenFromTheBaseWhenGiven() throws Exception {
        writeBase();
        double[] m = new double[H];
        Arrays.fill(m, 1.5);
        Path a = adapter("dora", "\"use_dora\": true", List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + proj(0, "q_proj") + ".lora_magnitude_vector", DType.F32, new long[] {H}, TinyModels.f32(m)),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + proj(1, "v_proj") + ".lora_magnitude_vector", DType.F32, new long[] {H}, TinyModels.f32(m))),
                0.1);
        Path merged = merge(a, "merged");
        Path out = dir.resolve("unmerged");
        CliRun refused = unmerge(merged, a, out);
        assertEquals(ExitCodes.BAD_INPUT, refused.code(), refused::both);
        assertTrue(refused.err().contains("DoRA") && refused.err().contains("--base") && refused.err().contains(proj(0, "q_proj")), refused::both);
        assertNothingWritten(out);

        CliRun withBase = unmerge(merged, a, out, "--base", base.toString());
        assertEquals(0, withBase.code(), withBase::both);
        Map<String, double[]> back = DenseModels.read(out);
        assertArrayEquals(baseModel.values(proj(0, "q_proj") + ".weight"), back.get(proj(0, "q_proj") + ".weight"), "taken from the base");
    }

    @Test
    void modulesToSaveAndTrainableTokensAreRefusedUnlessTheBaseIsGiven() throws Exception {
        writeBase();
        double[] norm = new double[H];
        Arrays.fill(norm, 2.0);
        Path saved = adapter("saved", "\"modules_to_save\": [\"model.norm\"]", List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + "model.norm.weight", DType.BF16, new long[] {H}, TinyModels.bf16(norm))), 0.1);
        Path out = dir.resolve("unmerged");
        CliRun r = unmerge(merge(saved, "merged-saved"), saved, out);
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r::both);
        assertTrue(r.err().contains("model.norm.weight") && r.err().contains("replaced"), r::both);
        assertNothingWritten(out);

        double[] row = new double[2 * H];
        Arrays.fill(row, 0.25);
        Path tokens = adapter("tokens", "\"trainable_token_indices\": [3, 7]", List.of(new TinyModels.Tensor(
                TinyModels.PEFT_PREFIX + "model.embed_tokens.token_adapter.trainable_tokens_delta", DType.BF16, new long[] {2, H}, TinyModels.bf16(row))), 0.1);
        Path mergedTokens = merge(tokens, "merged-tokens");
        CliRun t = unmerge(mergedTokens, tokens, out);
        assertEquals(ExitCodes.BAD_INPUT, t.code(), t::both);
        assertTrue(t.err().contains("model.embed_tokens.weight") && t.err().contains("trainable tokens"), t::both);
        assertNothingWritten(out);
        CliRun ok = unmerge(mergedTokens, tokens, out, "--base", base.toString());
        assertEquals(0, ok.code(), ok::both);
        assertArrayEquals(baseModel.values("model.embed_tokens.weight"), DenseModels.read(out).get("model.embed_tokens.weight"));
    }

    @Test
    void loraOnTheHeadOfATiedModelIsRefused() throws Exception {
        DenseModels tied = ExtractCliTest.llama(DType.BF16, 41).remove("lm_head.weight");
        Path tiedBase = tied.write(dir.resolve("tied-base"), "{\"model_type\": \"llama\", \"tie_word_embeddings\": true}\n");
        Random rnd = new Random(42);
        Path a = TinyModels.writeAdapter(dir.resolve("head"), TinyModels.loraConfig(4, 8, "[\"lm_head\"]", ""),
                pair("lm_head", 4, H, ExtractCliTest.V, 0.1, rnd));
        Path merged = dir.resolve("merged");
        // merged here by hand the way PEFT merges it: the head's delta added to the shared embedding
        Map<String, double[]> f = DenseModels.readFile(a.resolve("adapter_model.safetensors"));
        double[] delta = ExtractCliTest.product(f.get(TinyModels.PEFT_PREFIX + "lm_head.lora_B.weight"), f.get(TinyModels.PEFT_PREFIX + "lm_head.lora_A.weight"),
                ExtractCliTest.V, 4, H);
        for (int i = 0; i < delta.length; i++) {
            delta[i] *= 2;
        }
        DenseModels m = tied.copy();
        m.put("model.embed_tokens.weight", DType.BF16, new long[] {ExtractCliTest.V, H},
                ExtractCliTest.plus(tied.values("model.embed_tokens.weight"), delta, DType.BF16));
        m.write(merged, "{\"model_type\": \"llama\", \"tie_word_embeddings\": true}\n");
        Path out = dir.resolve("unmerged");
        CliRun r = unmerge(merged, a, out);
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r::both);
        assertTrue(r.err().contains("tied embeddings") && r.err().contains("--base"), r::both);
        assertNothingWritten(out);
        CliRun ok = unmerge(merged, a, out, "--base", tiedBase.toString());
        assertEquals(0, ok.code(), ok::both);
        assertArrayEquals(tied.values("model.embed_tokens.weight"), DenseModels.read(out).get("model.embed_tokens.weight"));
    }

    @Test
    void adapterThatDoesNotFitTheMergedModelIsBadInputAndWritesNothing() throws Exception {
        writeBase();
        Random rnd = new Random(43);
        Path wide = TinyModels.writeAdapter(dir.resolve("wide"), TinyModels.loraConfig(4, 8, "[\"q_proj\"]", ""), pair(proj(0, "q_proj"), 4, H + 8, H + 8, 0.1, rnd));
        Path out = dir.resolve("unmerged");
        CliRun r = unmerge(base, wide, out);
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r::both);
        assertTrue(r.err().contains(wide.toString()) && r.err().contains("shape mismatch"), r::both);
        assertNothingWritten(out);
    }

    @Test
    void baseOfAnotherShapeIsBadInputAndWritesNothing() throws Exception {
        writeBase();
        Path a = adapter("adapter", "", List.of(), 0.1);
        Path merged = merge(a, "merged");
        DenseModels other = baseModel.copy();
        other.put(proj(0, "q_proj") + ".weight", DType.BF16, new long[] {H, H / 2}, new double[H * H / 2]);
        Path otherBase = other.write(dir.resolve("other"), LLAMA);
        Path out = dir.resolve("unmerged");
        CliRun r = unmerge(merged, a, out, "--base", otherBase.toString());
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r::both);
        assertTrue(r.err().contains(proj(0, "q_proj")) && r.err().contains("pass the model the adapter was merged into"), r::both);
        assertNothingWritten(out);
    }

    /** FloatFormat is what the measurement's ulps are: a sanity anchor for the bound above. */
    @Test
    void ulpOfBf16AtOneIsTwoToTheMinusSeven() {
        assertEquals(0x1p-7, FloatFormat.BF16.ulp(1.0));
    }
}
