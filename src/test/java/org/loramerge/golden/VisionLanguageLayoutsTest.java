package org.loramerge.golden;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.FuzzFiles;
import org.loramerge.testutil.TinyModels;

/**
 * Vision-language checkpoints in the layouts users download, beside the golden cases of
 * scripts/fixtures/make_vlm_fixtures.py (which hold what save_pretrained writes): the Hub's Llava
 * checkpoints keep their CLIP tower's own vision_model level, which transformers drops on loading.
 */
class VisionLanguageLayoutsTest {
    private static final Path VLM = Paths.get("src/test/resources/vlm");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    @Test
    void aHubLayoutLlavaMergesToTheSameValuesUnderItsOwnNames() throws Exception {
        UnaryOperator<String> hub = n -> n.startsWith("vision_tower.") ? "vision_tower.vision_model." + n.substring("vision_tower.".length()) : n;
        Path base = tmp.resolve("base");
        Files.createDirectories(base);
        Files.copy(VLM.resolve("llava/base/config.json"), base.resolve("config.json"));
        renameTensors(VLM.resolve("llava/base/model.safetensors"), base.resolve("model.safetensors"), hub);
        Path out = tmp.resolve("out");
        CliRun run = merge(base, VLM.resolve("llava/adapter"), out);
        assertEquals(0, run.code(), run.both());
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint peft = Checkpoint.open(VLM.resolve("llava/peft"))) {
            TreeSet<String> expected = new TreeSet<>();
            peft.tensors().keySet().forEach(n -> expected.add(hub.apply(n)));
            assertEquals(expected, new TreeSet<>(ours.tensors().keySet()));
            for (Map.Entry<String, TensorInfo> e : peft.tensors().entrySet()) {
                assertArrayEquals(e.getValue().shape(), ours.tensor(hub.apply(e.getKey())).shape(), e.getKey());
            }
            // the CLIP tower's LoRA was found under the Hub's name and merged
            String q = "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight";
            try (Checkpoint b = Checkpoint.open(base)) {
                assertFalse(b.fileOf(q).readAll(b.tensor(q)).equals(ours.fileOf(q).readAll(ours.tensor(q))), q + " unchanged");
            }
            // and every tensor has the bytes of the merge of save_pretrained's layout (the golden case, within an ulp of PEFT's)
            Path plain = tmp.resolve("plain");
            assertEquals(0, merge(VLM.resolve("llava/base"), VLM.resolve("llava/adapter"), plain).code());
            try (Checkpoint golden = Checkpoint.open(plain)) {
                for (TensorInfo g : golden.tensors().values()) {
                    TensorInfo o = ours.tensor(hub.apply(g.name()));
                    assertEquals(golden.fileOf(g.name()).readAll(g), ours.fileOf(o.name()).readAll(o), g.name());
                }
            }
        }
        assertTrue(run.err().contains("as transformers loads this llava checkpoint"), run.both());
    }

    @Test
    void anAdapterUnderTheCheckpointsNamesWithPatternsByThemMergesTheSame() throws Exception {
        // PEFT under transformers 4 loaded (and saved adapters under) the checkpoint's names; its rank_pattern keys are those
        UnaryOperator<String> old = n -> n.replace("base_model.model.model.language_model.", "base_model.model.language_model.model.")
                .replace("base_model.model.model.", "base_model.model.");
        Path adapter = tmp.resolve("adapter");
        Files.createDirectories(adapter);
        renameTensors(VLM.resolve("gemma3/adapter/adapter_model.safetensors"), adapter.resolve("adapter_model.safetensors"), old);
        String config = Files.readString(VLM.resolve("gemma3/adapter/adapter_config.json"));
        assertTrue(config.contains("\"model.language_model.layers.1.self_attn.q_proj\""), config);
        Files.writeString(adapter.resolve("adapter_config.json"),
                config.replace("\"model.language_model.layers.1.self_attn.q_proj\"", "\"language_model.model.layers.1.self_attn.q_proj\""));
        Path out = tmp.resolve("out");
        CliRun run = merge(VLM.resolve("gemma3/base"), adapter, out);
        assertEquals(0, run.code(), run.both());
        assertFalse(run.err().contains("as transformers loads"), run.both());
        Path plain = tmp.resolve("plain");
        assertEquals(0, merge(VLM.resolve("gemma3/base"), VLM.resolve("gemma3/adapter"), plain).code());
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint golden = Checkpoint.open(plain)) {
            assertEquals(new TreeSet<>(golden.tensors().keySet()), new TreeSet<>(ours.tensors().keySet()));
            for (TensorInfo g : golden.tensors().values()) {
                assertEquals(golden.fileOf(g.name()).readAll(g), ours.fileOf(g.name()).readAll(ours.tensor(g.name())), g.name());
            }
        }
    }

    @Test
    void anAdapterForAnotherVisionLanguageModelIsStillRefused() throws Exception {
        Path out = tmp.resolve("out");
        CliRun run = merge(VLM.resolve("qwen2_vl/base"), VLM.resolve("llava/adapter"), out);
        assertEquals(3, run.code(), run.both());
        assertTrue(run.err().contains("another model"), run.both());
        assertFalse(Files.exists(out));
    }

    @Test
    void aResizedEmbeddingOfATiedVisionLanguageModelWithoutItsUntrainedCopyIsRefused() throws Exception {
        // PEFT 0.21 saves a VLM's resized modules_to_save embedding alone (no lm_head, no original_module): the untied head
        // would have to be the resized untrained embedding, which the adapter does not hold
        Path adapter = tmp.resolve("adapter");
        Files.createDirectories(adapter);
        Files.copy(VLM.resolve("gemma3_untied/adapter/adapter_config.json"), adapter.resolve("adapter_config.json"));
        TinyModels.writeSafetensors(adapter.resolve("adapter_model.safetensors"),
                List.of(TinyModels.bf16Tensor("base_model.model.model.language_model.embed_tokens.weight", 104, 32)));
        Path out = tmp.resolve("out");
        CliRun run = merge(VLM.resolve("gemma3_untied/base"), adapter, out);
        assertEquals(3, run.code(), run.both());
        assertTrue(run.err().contains("language_model.model.embed_tokens.weight"), run.both());
        assertFalse(Files.exists(out));
    }

    @Test
    void anExtractedAdapterNamesModulesAsPeftDoes() throws Exception {
        // PEFT's merge of the golden case, taken apart again: the LoRA keys are those PEFT saved for the same targets
        Path out = tmp.resolve("extracted");
        CliRun run = CliRun.of(() -> Main.run("extract", "--base", VLM.resolve("llava/base").toString(), "--tuned", VLM.resolve("llava/peft").toString(),
                "--target", "q_proj,v_proj,linear_1,lm_head", "--rank", "4", "--out", out.toString(), "--device", "cpu", "--quiet"));
        assertEquals(0, run.code(), run.both());
        try (SafetensorsFile ours = SafetensorsFile.open(out.resolve("adapter_model.safetensors"));
             SafetensorsFile peft = SafetensorsFile.open(VLM.resolve("llava/adapter/adapter_model.safetensors"))) {
            assertEquals(loraKeys(peft), loraKeys(ours));
        }
        JsonNode config = JSON.readTree(out.resolve("adapter_config.json").toFile());
        assertTrue(config.path("target_modules").toString().contains("\"model.language_model.layers.0.self_attn.q_proj\""), config.toString());
    }

    private static TreeSet<String> loraKeys(SafetensorsFile f) {
        TreeSet<String> keys = new TreeSet<>();
        f.tensors().stream().map(TensorInfo::name).filter(k -> k.contains(".lora_")).forEach(keys::add);
        return keys;
    }

    private static CliRun merge(Path base, Path adapter, Path out) {
        return CliRun.of(() -> Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", out.toString(), "--device", "cpu"));
    }

    /** Copies a safetensors file with its tensors renamed: the header rewritten, the data as it was. */
    private static void renameTensors(Path from, Path to, UnaryOperator<String> rename) throws Exception {
        byte[] header = FuzzFiles.headerOf(from);
        byte[] all = Files.readAllBytes(from);
        ObjectNode renamed = JSON.createObjectNode();
        for (Iterator<Map.Entry<String, JsonNode>> it = JSON.readTree(header).fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            renamed.set(e.getKey().equals("__metadata__") ? e.getKey() : rename.apply(e.getKey()), e.getValue());
        }
        String json = JSON.writeValueAsString(renamed);
        json += " ".repeat((8 - json.length() % 8) % 8); // the data 8-byte aligned, as safetensors writes it
        TinyModels.writeBytes(to, TinyModels.rawFile(json, Arrays.copyOfRange(all, 8 + header.length, all.length)));
    }
}
