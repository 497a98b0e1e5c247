package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.NavigableMap;
import java.util.NavigableSet;
import java.util.Set;
import java.util.TreeMap;
import java.util.TreeSet;
import org.loramerge.format.Checkpoint;

/**
 * The names transformers gives a vision-language checkpoint's tensors once loaded, which are the
 * names PEFT saves its adapters under (docs/FORMATS.md §1.4). transformers 5 loads a Llava-style
 * checkpoint's {@code language_model.model.layers.0...} as {@code model.language_model.layers.0...},
 * and saves it back under the checkpoint's name (conversion_mapping.py's renamings and their
 * reverse); PEFT targets and saves the loaded names. A merge reads the adapter's names, finds the
 * checkpoint's tensor they load into, and writes the checkpoint's names, as PEFT's merge followed by
 * save_pretrained does.
 *
 * <p>Two families are known, by config.json's model_type:
 * <ul>
 *   <li>Llava's ("llava" and the model types transformers maps to it, with llava_next, mllama,
 *       qwen2_audio and others of the same rules): {@code language_model.lm_head} is
 *       {@code lm_head}, {@code language_model.model.} is {@code model.language_model.}, any other
 *       top-level part {@code T.} is {@code model.T.}, and a CLIP or SigLIP vision tower (Video-LLaVA's image
 *       and video towers too) loses its {@code vision_model.} (transformers' PrefixChange for those towers;
 *       the tower named by vision_config.model_type, or the model type's default);
 *   <li>Qwen2-VL's (qwen2_vl, qwen2_5_vl): {@code visual.} is {@code model.visual.}, and {@code model.}
 *       outside {@code model.visual.} and {@code model.language_model.} is {@code model.language_model.}.
 * </ul>
 * Names already in the loaded form stay as they are, so a checkpoint saved with the loaded names,
 * and an adapter saved with the checkpoint's (transformers 4's), need nothing. A renaming that would
 * give two of the checkpoint's tensors one loaded name is not used: the adapter's names are then
 * looked up as they are, and a mismatch is reported as for any other model.
 */
public final class LoadedNames {
    /** The renaming families, each with the model types transformers applies it to. */
    enum Family {
        /** Model as the checkpoint names it. */
        NONE,
        /** conversion_mapping.py "llava" (and "llava_next", "mllama", "qwen2_audio", ...) with "LlavaModel". */
        LLAVA,
        /** conversion_mapping.py "Qwen2VLForConditionalGeneration" (and Qwen2.5-VL's). */
        QWEN2_VL
    }

    /** Model types whose checkpoints follow Llava's renaming (conversion_mapping.py, transformers 5). */
    static final Set<String> LLAVA_TYPES = Set.of("llava", "llava_next", "llava_next_video", "llava_onevision", "vipllava", "video_llava",
            "paligemma", "mistral3", "gemma3", "aya_vision", "internvl", "got_ocr2", "aria", "fuyu", "mllama", "qwen2_audio", "granite_speech",
            "pp_chart2table");
    /** Model types whose checkpoints follow Qwen2-VL's renaming. */
    static final Set<String> QWEN2_VL_TYPES = Set.of("qwen2_vl", "qwen2_5_vl");
    /**
     * Vision towers whose own {@code vision_model.} level transformers drops when loading them inside a Llava-style
     * model (conversion_mapping.py's PrefixChange for CLIPVisionModel and the classes it maps to it).
     */
    private static final Set<String> PREFIXED_TOWERS = Set.of("clip_vision_model", "siglip_vision_model", "siglip2_vision_model",
            "chinese_clip_vision_model", "altclip_vision_model", "metaclip_2_vision_model");
    /** The vision tower a model type's config gets when config.json's vision_config names none (its configuration_*.py default). */
    private static final Map<String, String> DEFAULT_TOWERS = Map.of("llava", "clip_vision_model", "llava_next", "clip_vision_model",
            "llava_next_video", "clip_vision_model", "vipllava", "clip_vision_model", "video_llava", "clip_vision_model",
            "llava_onevision", "siglip_vision_model", "paligemma", "siglip_vision_model", "aya_vision", "siglip_vision_model",
            "gemma3", "siglip_vision_model");
    /** The parts of a Llava-style model that hold a vision tower (Video-LLaVA has two). */
    private static final List<String> TOWERS = List.of("model.vision_tower", "model.image_tower", "model.video_tower");

    private static final LoadedNames NONE = new LoadedNames(Family.NONE, false, new TreeSet<>(), new TreeMap<>());

    private final Family family;
    private final boolean dropsVisionModel;
    /** The checkpoint's tensor names. */
    private final NavigableSet<String> stored;
    /** Loaded name to the checkpoint's, for every tensor whose name changes. */
    private final NavigableMap<String, String> toStored;

    private LoadedNames(Family family, boolean dropsVisionModel, NavigableSet<String> stored, NavigableMap<String, String> toStored) {
        this.family = family;
        this.dropsVisionModel = dropsVisionModel;
        this.stored = stored;
        this.toStored = toStored;
    }

    /** Names as they are: for a model whose checkpoint and loaded names are the same. */
    public static LoadedNames none() {
        return NONE;
    }

    /** The renaming for this checkpoint, from its config.json (model_type, vision_config.model_type) and its tensor names. */
    public static LoadedNames of(Checkpoint checkpoint) {
        JsonNode config = checkpoint.config();
        return of(checkpoint.modelType(), config == null ? "" : config.path("vision_config").path("model_type").asText(""),
                checkpoint.tensors().keySet());
    }

    /**
     * The renaming for a checkpoint of {@code modelType} (config.json's model_type) with these tensor
     * names; {@code visionModelType} is config.json's vision_config.model_type, or "" for the model type's default.
     */
    public static LoadedNames of(String modelType, String visionModelType, Collection<String> tensorNames) {
        String type = modelType.toLowerCase(Locale.ROOT);
        Family family = LLAVA_TYPES.contains(type) ? Family.LLAVA : QWEN2_VL_TYPES.contains(type) ? Family.QWEN2_VL : Family.NONE;
        if (family == Family.NONE) {
            return NONE;
        }
        String tower = visionModelType.isEmpty() ? DEFAULT_TOWERS.getOrDefault(type, "") : visionModelType.toLowerCase(Locale.ROOT);
        boolean drops = PREFIXED_TOWERS.contains(tower);
        NavigableSet<String> stored = new TreeSet<>(tensorNames);
        NavigableMap<String, String> toStored = new TreeMap<>();
        Map<String, Integer> seen = new HashMap<>();
        for (String s : stored) {
            String l = loaded(family, drops, s);
            seen.merge(l, 1, Integer::sum);
            if (!l.equals(s)) {
                toStored.put(l, s);
            }
        }
        for (Map.Entry<String, Integer> e : seen.entrySet()) {
            if (e.getValue() > 1) {
                return NONE; // two tensors would load under one name: not a checkpoint of this family's layout
            }
        }
        return toStored.isEmpty() ? NONE : new LoadedNames(family, drops, stored, toStored);
    }

    /** Whether any name of the checkpoint differs from its loaded name. */
    public boolean renames() {
        return family != Family.NONE;
    }

    /** One renamed tensor, for messages: "language_model.model.norm.weight is model.language_model.norm.weight". */
    public String example() {
        if (toStored.isEmpty()) {
            return "no tensor is renamed";
        }
        for (Map.Entry<String, String> e : toStored.entrySet()) {
            if (e.getKey().contains(".layers.")) {
                return e.getValue() + " is " + e.getKey(); // a language model's layer, the usual target
            }
        }
        return toStored.firstEntry().getValue() + " is " + toStored.firstEntry().getKey();
    }

    /** The name transformers gives the checkpoint's module or tensor {@code name} once loaded (the name PEFT uses). */
    public String loaded(String name) {
        return loaded(family, dropsVisionModel, name);
    }

    private static String loaded(Family family, boolean dropsVisionModel, String name) {
        switch (family) {
            case LLAVA -> {
                String l;
                if (under(name, "language_model.lm_head")) {
                    l = "lm_head" + name.substring("language_model.lm_head".length());
                } else if (under(name, "language_model.model")) {
                    l = "model.language_model" + name.substring("language_model.model".length());
                } else if (under(name, "language_model")) {
                    l = "model." + name;
                } else if (under(name, "model") || under(name, "lm_head")) {
                    l = name;
                } else {
                    l = "model." + name;
                }
                if (dropsVisionModel) {
                    for (String tower : TOWERS) {
                        if (under(l, tower + ".vision_model")) {
                            return tower + l.substring((tower + ".vision_model").length());
                        }
                    }
                }
                return l;
            }
            case QWEN2_VL -> {
                if (under(name, "visual")) {
                    return "model." + name;
                }
                if (under(name, "model") && !under(name, "model.visual") && !under(name, "model.language_model")) {
                    return "model.language_model" + name.substring("model".length());
                }
                return name;
            }
            default -> {
                return name;
            }
        }
    }

    /**
     * The checkpoint's name for the module or tensor an adapter calls {@code name} (a loaded name):
     * {@code name} itself when the checkpoint has it (or tensors under it), or when nothing loads
     * under it.
     */
    public String stored(String name) {
        if (family == Family.NONE || has(name)) {
            return name;
        }
        String s = toStored.get(name);
        if (s != null) {
            return s;
        }
        String under = toStored.ceilingKey(name + ".");
        if (under != null && under.startsWith(name + ".")) {
            String tail = under.substring(name.length());
            String full = toStored.get(under);
            if (full.endsWith(tail)) {
                return full.substring(0, full.length() - tail.length());
            }
        }
        return name; // e.g. the head of a tied model, which save_pretrained writes as lm_head.weight when it is untied
    }

    /** Whether the checkpoint has a tensor {@code name} or tensors under it. */
    private boolean has(String name) {
        if (stored.contains(name)) {
            return true;
        }
        String next = stored.ceiling(name + ".");
        return next != null && next.startsWith(name + ".");
    }

    /** Whether {@code name} is {@code prefix} or lies under it (a dot after it). */
    private static boolean under(String name, String prefix) {
        return name.startsWith(prefix) && (name.length() == prefix.length() || name.charAt(prefix.length()) == '.');
    }
}
