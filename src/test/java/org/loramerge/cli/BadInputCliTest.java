package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.cli.CliRun.assertBadInput;
import static org.loramerge.cli.CliRun.assertNoLeftovers;
import static org.loramerge.cli.CliRun.assertNoOutput;
import static org.loramerge.cli.CliRun.merge;
import static org.loramerge.testutil.TinyModels.f16;
import static org.loramerge.testutil.TinyModels.f32;
import static org.loramerge.testutil.TinyModels.hashTree;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.q;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.shardName;
import static org.loramerge.testutil.TinyModels.writeAdapter;
import static org.loramerge.testutil.TinyModels.writeIndex;
import static org.loramerge.testutil.TinyModels.writeSafetensors;
import static org.loramerge.testutil.TinyModels.writeText;

import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * Bad inputs end to end through {@code loramerge merge}: exit code 3, a message that names the
 * offending file and says what to do, and no output folder (not even a hidden partial one). Also the
 * output-folder rules: never over an existing folder without --overwrite, never into or over the
 * inputs, and the inputs' bytes never change.
 */
class BadInputCliTest {
    @TempDir
    Path dir;

    private Path models;
    private Path base;
    private Path adapter;

    @BeforeEach
    void writeInputs() {
        models = dir.resolve("models");
        base = TinyModels.writeTinyLlama(models.resolve("base"));
        adapter = writeAdapter(models.resolve("adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), qProjAdapter(4));
    }

    // ------------------------------------------------------------------ bad inputs: exit 3, nothing written

    @Test
    void loraOnLmHeadOfAnUntiedModelThatStoresNoLmHeadIsRefusedInsteadOfMergedIntoTheEmbedding() throws Exception {
        // tie_word_embeddings: false and no lm_head.weight (a headless checkpoint): lm_head is not the embedding, so a LoRA
        // on it has no base tensor; merging it into model.embed_tokens.weight would change the embedding the model uses
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        tensors.add(TinyModels.bf16Tensor("model.embed_tokens.weight", 16, 8));
        Path headless = TinyModels.writeModel(models.resolve("headless"), tensors);
        Path head = writeAdapter(models.resolve("head-adapter"), loraConfig(4, 8, "[\"lm_head\"]", ""),
                TinyModels.loraPair("lm_head", 4, 8, 16));
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(headless, head, out);
        assertBadInput(r, out, "lm_head.weight");
        assertTrue(r.err().contains(TinyModels.PEFT_PREFIX + "lm_head.lora_A.weight"), r.err());
    }

    @Test
    void truncatedBaseShardIsBadInputAndWritesNothing() throws Exception {
        Path sharded = TinyModels.writeShardedModel(models.resolve("sharded"),
                List.of(TinyModels.tinyLlama().subList(0, 3), TinyModels.tinyLlama().subList(3, 7)));
        Path shard = sharded.resolve(shardName(1, 2));
        try (RandomAccessFile raf = new RandomAccessFile(shard.toFile(), "rw")) {
            raf.setLength(raf.length() - 10); // an interrupted download
        }
        Map<String, String> before = hashTree(sharded);
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(sharded, adapter, out);
        assertBadInput(r, out, shard);
        assertEquals(before, hashTree(sharded));
    }

    @Test
    void corruptedBaseHeaderIsBadInputAndWritesNothing() throws Exception {
        Path file = base.resolve("model.safetensors");
        try (RandomAccessFile raf = new RandomAccessFile(file.toFile(), "rw")) {
            raf.seek(8);
            raf.write("#!garbage".getBytes(StandardCharsets.US_ASCII)); // the JSON header no longer starts with '{'
        }
        Path out = dir.resolve("merged");
        assertBadInput(merge(base, adapter, out), out, file);
    }

    @Test
    void corruptedHeaderJsonIsBadInputAndWritesNothing() throws Exception {
        Path file = base.resolve("model.safetensors");
        byte[] raw = Files.readAllBytes(file);
        String header = new String(raw, 8, 40, StandardCharsets.US_ASCII);
        int colon = header.indexOf(':');
        raw[8 + colon] = ';'; // one flipped byte inside the JSON
        Files.write(file, raw);
        Path out = dir.resolve("merged");
        assertBadInput(merge(base, adapter, out), out, file);
    }

    @Test
    void adapterForAnotherModelIsBadInputAndWritesNothing() {
        List<Tensor> wide = new ArrayList<>();
        wide.addAll(TinyModels.loraPair(q(0), 4, 16, 16)); // trained on a model with hidden size 16
        wide.addAll(TinyModels.loraPair(q(1), 4, 16, 16));
        Path other = writeAdapter(models.resolve("other-adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), wide);
        Map<String, String> before = hashTree(models);
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(base, other, out);
        assertBadInput(r, out, other);
        assertTrue(r.err().contains(q(0)), r::err);
        assertEquals(before, hashTree(models));
    }

    @Test
    void indexPointingOutsideTheModelFolderIsBadInputAndWritesNothing() {
        Path sharded = TinyModels.writeShardedModel(models.resolve("sharded"),
                List.of(TinyModels.tinyLlama().subList(0, 3), TinyModels.tinyLlama().subList(3, 7)));
        // a real file outside the folder that the index reaches for with a path
        writeSafetensors(models.resolve("outside.safetensors"), TinyModels.tinyLlama().subList(3, 7));
        Map<String, String> map = new LinkedHashMap<>();
        TinyModels.tinyLlama().subList(0, 3).forEach(t -> map.put(t.name(), shardName(0, 2)));
        TinyModels.tinyLlama().subList(3, 7).forEach(t -> map.put(t.name(), "../outside.safetensors"));
        Path index = writeIndex(sharded, map, 0);
        Path out = dir.resolve("merged");
        assertBadInput(merge(sharded, adapter, out), out, index);
    }

    @Test
    void symlinkedShardAsInTheHuggingFaceCacheMerges() throws Exception {
        // a snapshot folder of the Hugging Face cache links each file to ../../blobs/<hash>
        Path sharded = TinyModels.asHuggingFaceCache(TinyModels.writeShardedModel(models.resolve("sharded"),
                List.of(TinyModels.tinyLlama().subList(0, 3), TinyModels.tinyLlama().subList(3, 7))), dir.resolve("hub"), "org/tiny");
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(sharded, adapter, out);
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertTrue(Files.isRegularFile(out.resolve("model.safetensors")), r::err);
    }

    @Test
    void overflowWhileWritingLeavesNoOutputBehind() {
        // fails in the middle of writing, after the hidden temporary folder exists: it must be removed
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        double[] big = new double[64];
        Arrays.fill(big, 60000.0);
        tensors.set(0, new Tensor(q(0) + ".weight", DType.F16, new long[] {8, 8}, f16(big)));
        Path f16Base = TinyModels.writeModel(models.resolve("f16-base"), tensors);
        double[] ones = new double[32];
        Arrays.fill(ones, 1.0);
        double[] thousands = new double[32];
        Arrays.fill(thousands, 1000.0);
        List<Tensor> adapterTensors = new ArrayList<>(List.of(
                new Tensor(TinyModels.PEFT_PREFIX + q(0) + ".lora_A.weight", DType.F32, new long[] {4, 8}, f32(ones)),
                new Tensor(TinyModels.PEFT_PREFIX + q(0) + ".lora_B.weight", DType.F32, new long[] {8, 4}, f32(thousands))));
        Path hot = writeAdapter(models.resolve("hot-adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), adapterTensors);
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(f16Base, hot, out);
        assertEquals(ExitCodes.NON_FINITE, r.code(), r::err);
        assertTrue(r.err().contains("--allow-overflow"), r::err);
        assertNoOutput(out);
    }

    // ------------------------------------------------------------------ the output folder

    @Test
    void existingOutputWithoutOverwriteIsRefusedAndLeftUntouched() throws Exception {
        Path out = Files.createDirectories(dir.resolve("merged"));
        writeText(out.resolve("keep.txt"), "the user's earlier work\n");
        Map<String, String> before = hashTree(out);
        CliRun.Result r = merge(base, adapter, out);
        assertEquals(ExitCodes.OUTPUT, r.code(), r::err);
        assertTrue(r.err().contains(out.toString()) && r.err().contains("--overwrite"), r::err);
        assertEquals(before, hashTree(out));
        assertNoLeftovers(out);
    }

    @Test
    void existingOutputWithOverwriteIsReplaced() throws Exception {
        Path out = Files.createDirectories(dir.resolve("merged"));
        writeText(out.resolve("keep.txt"), "stale\n");
        CliRun.Result r = merge(base, adapter, out, "--overwrite");
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertFalse(Files.exists(out.resolve("keep.txt")), "the old folder's content survived --overwrite");
        assertTrue(TinyModels.list(out).containsAll(List.of("config.json", "model.safetensors")), () -> "output holds " + TinyModels.list(out));
        assertMergedCorrectly(out);
        assertNoLeftovers(out);
    }

    @Test
    void outputEqualToTheBaseIsRefusedEvenWithOverwrite() {
        Map<String, String> before = hashTree(models);
        for (String[] extra : new String[][] {{}, {"--overwrite"}}) {
            CliRun.Result r = merge(base, adapter, base, extra);
            assertEquals(ExitCodes.OUTPUT, r.code(), r::err);
            assertTrue(r.err().contains(base.toString()), r::err);
            assertEquals(before, hashTree(models), "the base folder changed");
            assertNoLeftovers(base);
        }
    }

    @Test
    void outputInsideTheBaseIsRefused() {
        Map<String, String> before = hashTree(models);
        Path out = base.resolve("merged");
        CliRun.Result r = merge(base, adapter, out, "--overwrite");
        assertEquals(ExitCodes.OUTPUT, r.code(), r::err);
        assertEquals(before, hashTree(models), "the base folder changed");
    }

    @Test
    void outputThatContainsTheBaseIsRefusedEvenWithOverwrite() {
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(base, adapter, models, "--overwrite");
        assertEquals(ExitCodes.OUTPUT, r.code(), r::err);
        assertEquals(before, hashTree(models), "the folder holding the base changed");
        assertNoLeftovers(models);
    }

    @Test
    void outputInsideTheAdapterIsRefused() {
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(base, adapter, adapter.resolve("merged"));
        assertEquals(ExitCodes.OUTPUT, r.code(), r::err);
        assertEquals(before, hashTree(models), "the adapter folder changed");
    }

    @Test
    void successfulMergeNeverChangesItsInputs() throws Exception {
        writeText(base.resolve("tokenizer.json"), "{\"version\": \"1.0\"}\n");
        Map<String, String> before = hashTree(models);
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(base, adapter, out);
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertEquals(before, hashTree(models), "a successful merge changed the base or adapter files");
        assertMergedCorrectly(out);
        assertTrue(Files.exists(out.resolve("tokenizer.json")), "non-weight files of the base are copied");
        assertNoLeftovers(out);
    }

    /** The q_proj weights changed, everything else is byte-identical to the base, and the file is marked format pt. */
    private void assertMergedCorrectly(Path out) throws Exception {
        try (SafetensorsFile merged = SafetensorsFile.open(out.resolve("model.safetensors"));
             SafetensorsFile original = SafetensorsFile.open(base.resolve("model.safetensors"))) {
            assertEquals(Map.of("format", "pt"), merged.metadata());
            assertEquals(original.tensors().stream().map(t -> t.name()).toList(), merged.tensors().stream().map(t -> t.name()).toList());
            for (var t : original.tensors()) {
                byte[] a = bytes(original.readAll(t));
                byte[] b = bytes(merged.readAll(merged.tensor(t.name())));
                if (t.name().contains("q_proj")) {
                    assertFalse(Arrays.equals(a, b), t.name() + " was not merged");
                } else {
                    assertArrayEquals(a, b, t.name() + " changed although no adapter key targets it");
                }
            }
        }
    }

    private static byte[] bytes(java.nio.ByteBuffer b) {
        byte[] out = new byte[b.remaining()];
        b.duplicate().get(out);
        return out;
    }
}
