package org.loramerge.plan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The loaded names of vision-language checkpoints, as transformers 5's conversion_mapping.py renames them (the
 * checkpoints' names here are those of the Hub's llava-1.5, Qwen2-VL and Gemma 3 checkpoints, and of save_pretrained's).
 */
class LoadedNamesTest {
    private static final List<String> LLAVA_HUB = List.of(
            "language_model.lm_head.weight",
            "language_model.model.embed_tokens.weight",
            "language_model.model.layers.0.self_attn.q_proj.weight",
            "language_model.model.norm.weight",
            "multi_modal_projector.linear_1.weight",
            "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_tower.vision_model.post_layernorm.weight");

    @Test
    void llavaCheckpointNamesLoadAsTransformersRenamesThem() {
        LoadedNames n = LoadedNames.of("llava", "clip_vision_model", LLAVA_HUB);
        assertTrue(n.renames());
        assertEquals("lm_head.weight", n.loaded("language_model.lm_head.weight"));
        assertEquals("model.language_model.layers.0.self_attn.q_proj", n.loaded("language_model.model.layers.0.self_attn.q_proj"));
        assertEquals("model.multi_modal_projector.linear_1", n.loaded("multi_modal_projector.linear_1"));
        assertEquals("model.vision_tower.encoder.layers.0.self_attn.q_proj", n.loaded("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj"));
    }

    @Test
    void anAdaptersLoadedNamesFindTheCheckpointsModulesAndTensors() {
        LoadedNames n = LoadedNames.of("llava", "clip_vision_model", LLAVA_HUB);
        assertEquals("language_model.model.layers.0.self_attn.q_proj", n.stored("model.language_model.layers.0.self_attn.q_proj"));
        assertEquals("language_model.model.embed_tokens.weight", n.stored("model.language_model.embed_tokens.weight"));
        assertEquals("vision_tower.vision_model.encoder.layers.0.self_attn.q_proj", n.stored("model.vision_tower.encoder.layers.0.self_attn.q_proj"));
        assertEquals("language_model.lm_head", n.stored("lm_head"));
        assertEquals("multi_modal_projector.linear_1", n.stored("model.multi_modal_projector.linear_1"));
        // the checkpoint's own names (an adapter saved by transformers 4) stay as they are
        assertEquals("language_model.model.layers.0.self_attn.q_proj", n.stored("language_model.model.layers.0.self_attn.q_proj"));
        // a name nothing loads under is left for the planner to report
        assertEquals("model.language_model.layers.7.self_attn.q_proj", n.stored("model.language_model.layers.7.self_attn.q_proj"));
    }

    @Test
    void aTiedHeadKeepsItsLoadedNameAsSavePretrainedWritesIt() {
        LoadedNames n = LoadedNames.of("gemma3", "siglip_vision_model", List.of(
                "language_model.model.embed_tokens.weight", "language_model.model.layers.0.self_attn.q_proj.weight",
                "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"));
        // the checkpoint holds no head, so nothing renamed it on loading, and save_pretrained writes an untied one as lm_head.weight
        assertEquals("lm_head.weight", n.stored("lm_head.weight"));
        assertEquals("lm_head", n.loaded("language_model.lm_head"));
    }

    @Test
    void aVisionTowerKeepsItsPrefixWhenTransformersKeepsIt() {
        // Pixtral (Mistral 3) has no vision_model level to drop
        LoadedNames n = LoadedNames.of("mistral3", "pixtral", List.of("language_model.model.norm.weight", "vision_tower.vision_model.x.weight"));
        assertEquals("model.vision_tower.vision_model.x", n.loaded("vision_tower.vision_model.x"));
        assertEquals("vision_tower.vision_model.x", n.stored("model.vision_tower.vision_model.x"));
    }

    @Test
    void videoLlavasTwoTowersBothLoseTheirPrefix() {
        LoadedNames n = LoadedNames.of("video_llava", "clip_vision_model", List.of("language_model.model.norm.weight",
                "image_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight", "video_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight"));
        assertEquals("image_tower.vision_model.encoder.layers.0.self_attn.q_proj", n.stored("model.image_tower.encoder.layers.0.self_attn.q_proj"));
        assertEquals("video_tower.vision_model.encoder.layers.0.self_attn.q_proj", n.stored("model.video_tower.encoder.layers.0.self_attn.q_proj"));
    }

    @Test
    void aVisionConfigWithoutAModelTypeHasTheModelTypesDefaultTower() {
        // configuration_gemma3.py and configuration_llava.py fill in SigLIP and CLIP; Mistral 3's default, Pixtral, keeps its names
        List<String> names = List.of("language_model.model.norm.weight", "vision_tower.vision_model.encoder.x.weight");
        assertEquals("vision_tower.vision_model.encoder.x", LoadedNames.of("gemma3", "", names).stored("model.vision_tower.encoder.x"));
        assertEquals("vision_tower.vision_model.encoder.x", LoadedNames.of("llava", "", names).stored("model.vision_tower.encoder.x"));
        assertEquals("model.vision_tower.vision_model.encoder.x", LoadedNames.of("mistral3", "", names).loaded("vision_tower.vision_model.encoder.x"));
    }

    @Test
    void qwen2VlCheckpointNamesLoadUnderTheLanguageModel() {
        LoadedNames n = LoadedNames.of("qwen2_vl", "qwen2_vl", List.of(
                "lm_head.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                "visual.blocks.0.attn.qkv.weight", "visual.merger.mlp.0.weight"));
        assertEquals("model.language_model.layers.0.self_attn.q_proj", n.loaded("model.layers.0.self_attn.q_proj"));
        assertEquals("model.visual.blocks.0.attn.qkv", n.loaded("visual.blocks.0.attn.qkv"));
        assertEquals("lm_head", n.loaded("lm_head"));
        assertEquals("model.layers.0.self_attn.q_proj", n.stored("model.language_model.layers.0.self_attn.q_proj"));
        assertEquals("visual.merger.mlp.0", n.stored("model.visual.merger.mlp.0"));
        assertEquals("lm_head", n.stored("lm_head"));
    }

    @Test
    void checkpointsAlreadyInTheLoadedLayoutAndOtherModelsAreLeftAlone() {
        assertFalse(LoadedNames.of("llava", "clip_vision_model", List.of("lm_head.weight", "model.language_model.norm.weight",
                "model.vision_tower.encoder.x.weight")).renames());
        assertFalse(LoadedNames.of("qwen2_5_vl", "", List.of("lm_head.weight", "model.language_model.norm.weight", "model.visual.x.weight")).renames());
        LoadedNames llama = LoadedNames.of("llama", "", List.of("model.layers.0.self_attn.q_proj.weight", "lm_head.weight"));
        assertFalse(llama.renames());
        assertEquals("model.language_model.layers.0.self_attn.q_proj", llama.stored("model.language_model.layers.0.self_attn.q_proj"));
        assertEquals("model.layers.0.self_attn.q_proj", llama.loaded("model.layers.0.self_attn.q_proj"));
    }

    @Test
    void aRenamingThatWouldLoadTwoTensorsUnderOneNameIsNotUsed() {
        // both language_model.model.norm and model.language_model.norm would load as model.language_model.norm
        LoadedNames n = LoadedNames.of("llava", "", List.of("language_model.model.norm.weight", "model.language_model.norm.weight"));
        assertFalse(n.renames());
        assertEquals("model.language_model.norm.weight", n.stored("model.language_model.norm.weight"));
    }
}
