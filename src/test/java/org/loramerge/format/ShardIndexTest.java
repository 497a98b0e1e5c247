package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.testutil.TinyModels.bf16Tensor;
import static org.loramerge.testutil.TinyModels.shardName;
import static org.loramerge.testutil.TinyModels.writeIndex;
import static org.loramerge.testutil.TinyModels.writeSafetensors;
import static org.loramerge.testutil.TinyModels.writeShardedModel;
import static org.loramerge.testutil.TinyModels.writeText;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.format.SafetensorsException.Reason;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/** model.safetensors.index.json: shard names are plain file names, and the index must agree with the shards. */
class ShardIndexTest {
    @TempDir
    Path dir;

    /** Shard 1 holds the layers, shard 2 the final norm and lm_head, as transformers splits a llama. */
    private static final List<Tensor> SHARD1 = List.of(
            bf16Tensor("model.embed_tokens.weight", 16, 8),
            bf16Tensor("model.layers.0.self_attn.q_proj.weight", 8, 8),
            bf16Tensor("model.layers.0.input_layernorm.weight", 8));
    private static final List<Tensor> SHARD2 = List.of(
            bf16Tensor("model.norm.weight", 8),
            bf16Tensor("lm_head.weight", 16, 8));

    private static long bytes(List<Tensor> tensors) {
        long n = 0;
        for (Tensor t : tensors) {
            n += t.data().length;
        }
        return n;
    }

    private Path model() {
        return writeShardedModel(dir.resolve("model"), List.of(SHARD1, SHARD2));
    }

    @ParameterizedTest(name = "\"{0}\"")
    @ValueSource(strings = {"../x.safetensors", "/etc/passwd", "a/b.safetensors", "..", ".", "", "sub\\x.safetensors",
            "..\\x.safetensors", "~/x.safetensors"})
    void shardNamesThatAreNotPlainFileNamesAreInvalidIndex(String shard) {
        Path index = writeIndex(dir, Map.of("model.norm.weight", shard), 16);
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> ShardIndex.read(index));
        assertEquals(Reason.INVALID_INDEX, e.reason(), e::getMessage);
        assertEquals(index, e.path());
        assertTrue(e.getMessage().contains(index.toString()), e::getMessage);
        assertEquals("model.norm.weight", e.tensor());
        assertTrue(e.getMessage().contains("\"" + shard + "\""), () -> "message does not quote the shard name: " + e.getMessage());
    }

    @Test
    void pathShardNameIsRefusedEvenWhenTheFileItNamesExists() {
        // a real, valid safetensors file one level up: the index must still not reach it
        Path model = model();
        writeSafetensors(dir.resolve("outside.safetensors"), List.of(bf16Tensor("model.norm.weight", 8)));
        Map<String, String> map = new LinkedHashMap<>();
        SHARD1.forEach(t -> map.put(t.name(), shardName(0, 2)));
        map.put("model.norm.weight", "../outside.safetensors");
        map.put("lm_head.weight", shardName(1, 2));
        Path index = writeIndex(model, map, 0);
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INVALID_INDEX, e.reason(), e::getMessage);
        assertEquals(index, e.path());
    }

    @Test
    void indexNamingAMissingShardIsIndexMismatch() throws Exception {
        Path model = model();
        Files.delete(model.resolve(shardName(1, 2)));
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INDEX_MISMATCH, e.reason(), e::getMessage);
        assertEquals(model.resolve(ShardIndex.FILE_NAME), e.path());
        assertTrue(e.getMessage().contains(shardName(1, 2)), () -> "message does not name the missing shard: " + e.getMessage());
    }

    @Test
    void indexPlacingATensorInAShardThatDoesNotHoldItIsIndexMismatch() {
        Path model = model();
        Map<String, String> map = new LinkedHashMap<>();
        SHARD1.forEach(t -> map.put(t.name(), shardName(0, 2)));
        SHARD2.forEach(t -> map.put(t.name(), shardName(1, 2)));
        map.put("model.layers.1.self_attn.q_proj.weight", shardName(1, 2)); // in no shard at all
        writeIndex(model, map, bytes(SHARD1) + bytes(SHARD2));
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INDEX_MISMATCH, e.reason(), e::getMessage);
        assertEquals("model.layers.1.self_attn.q_proj.weight", e.tensor());
        assertTrue(e.getMessage().contains(shardName(1, 2)), e::getMessage);
    }

    @Test
    void indexPlacingATensorInTheWrongShardIsIndexMismatch() {
        Path model = model();
        Map<String, String> map = new LinkedHashMap<>();
        SHARD1.forEach(t -> map.put(t.name(), shardName(0, 2)));
        SHARD2.forEach(t -> map.put(t.name(), shardName(1, 2)));
        map.put("model.norm.weight", shardName(0, 2)); // it lives in shard 2
        writeIndex(model, map, bytes(SHARD1) + bytes(SHARD2));
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INDEX_MISMATCH, e.reason(), e::getMessage);
        assertEquals("model.norm.weight", e.tensor());
    }

    @Test
    void symlinkedShardsAsInTheHuggingFaceCacheAreRead() throws Exception {
        // snapshots/<rev>/model-0000x.safetensors -> ../../blobs/<hash>: the index names a plain file; the link is the cache's
        Path snapshot = TinyModels.asHuggingFaceCache(model(), dir.resolve("hub"), "org/tiny");
        try (Checkpoint c = Checkpoint.open(snapshot)) {
            assertEquals(5, c.tensors().size());
            assertNotNull(c.config());
        }
    }

    @Test
    void wrongTotalSizeIsAWarningNotAnError() throws Exception {
        Path model = model();
        Map<String, String> map = new LinkedHashMap<>();
        SHARD1.forEach(t -> map.put(t.name(), shardName(0, 2)));
        SHARD2.forEach(t -> map.put(t.name(), shardName(1, 2)));
        long real = bytes(SHARD1) + bytes(SHARD2);
        writeIndex(model, map, real * 2);
        try (Checkpoint c = Checkpoint.open(model)) {
            assertEquals(5, c.tensors().size());
            assertEquals(real, c.totalTensorBytes());
            assertEquals(1, c.warnings().size(), () -> "warnings: " + c.warnings());
            String w = c.warnings().get(0);
            assertTrue(w.contains("total_size") && w.contains(Long.toString(real * 2)) && w.contains(Long.toString(real)), w);
        }
    }

    @Test
    void correctIndexGivesNoWarning() throws Exception {
        try (Checkpoint c = Checkpoint.open(model())) {
            assertEquals(List.of(), c.warnings());
        }
    }

    @Test
    void validTwoShardCheckpointListsTensorsInShardOrder() throws Exception {
        // the index is written sorted by tensor name (as transformers writes it), so its first entry,
        // lm_head.weight, lives in the second shard: the listing must still follow the shards
        Path model = model();
        try (Checkpoint c = Checkpoint.open(model)) {
            assertTrue(c.isSharded());
            List<String> expected = new ArrayList<>();
            SHARD1.forEach(t -> expected.add(t.name()));
            SHARD2.forEach(t -> expected.add(t.name()));
            assertEquals(expected, new ArrayList<>(c.tensors().keySet()));
            assertEquals(List.of(model.resolve(shardName(0, 2)), model.resolve(shardName(1, 2))),
                    c.files().stream().map(SafetensorsFile::path).toList());
            assertEquals(model.resolve(shardName(1, 2)), c.fileOf("lm_head.weight").path());
            assertEquals(model.resolve(shardName(0, 2)), c.fileOf("model.embed_tokens.weight").path());
            TensorInfo q = c.tensor("model.layers.0.self_attn.q_proj.weight");
            assertNotNull(q);
            assertEquals(DType.BF16, q.dtype());
            assertEquals(bytes(SHARD1) + bytes(SHARD2), c.totalTensorBytes());
        }
    }

    @Test
    void tensorInAShardThatTheIndexDoesNotListIsIndexMismatchNamingTensorAndShard() {
        Path model = dir.resolve("extra");
        writeText(model.resolve("config.json"), TinyModels.LLAMA_CONFIG);
        writeSafetensors(model.resolve(shardName(0, 1)), List.of(bf16Tensor("model.norm.weight", 8), bf16Tensor("lm_head.weight", 8)));
        writeIndex(model, Map.of("model.norm.weight", shardName(0, 1)), 16);
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INDEX_MISMATCH, e.reason(), e::getMessage);
        assertEquals("lm_head.weight", e.tensor());
        assertTrue(e.getMessage().contains(shardName(0, 1)) && e.getMessage().contains(ShardIndex.FILE_NAME), e::getMessage);
    }

    @Test
    void tensorHeldByTwoShardsIsIndexMismatchNamingBoth() {
        Path model = dir.resolve("twice");
        writeText(model.resolve("config.json"), TinyModels.LLAMA_CONFIG);
        writeSafetensors(model.resolve(shardName(0, 2)), List.of(bf16Tensor("model.norm.weight", 8)));
        writeSafetensors(model.resolve(shardName(1, 2)), List.of(bf16Tensor("model.norm.weight", 8), bf16Tensor("lm_head.weight", 8)));
        writeIndex(model, Map.of("model.norm.weight", shardName(0, 2), "lm_head.weight", shardName(1, 2)), 32);
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> Checkpoint.open(model).close());
        assertEquals(Reason.INDEX_MISMATCH, e.reason(), e::getMessage);
        assertEquals("model.norm.weight", e.tensor());
        assertTrue(e.getMessage().contains(shardName(0, 2)) && e.getMessage().contains(shardName(1, 2)), e::getMessage);
    }
}
