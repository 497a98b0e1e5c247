package org.loramerge.adapter;

/**
 * What one key of a PEFT adapter file means, after the {@code base_model.model.} prefix
 * (FORMATS.md §1; peft utils/save_and_load.py strips the adapter name from saved keys).
 *
 * @param kind   the key's role
 * @param module the module name for LoRA parts, or the base tensor name for replacements
 * @param key    the key as it stands in the file
 */
public record AdapterKey(Kind kind, String module, String key) {
    public enum Kind {
        /** {@code X.lora_A.weight} [r, in(, k...)] */
        LORA_A,
        /** {@code X.lora_B.weight} [out, r(, 1...)] */
        LORA_B,
        /** {@code X.lora_B.bias} [out], with lora_bias: X.bias += s * b */
        LORA_B_BIAS,
        /** {@code X.lora_embedding_A} [r, vocab] */
        EMBEDDING_A,
        /** {@code X.lora_embedding_B} [dim, r] */
        EMBEDDING_B,
        /** {@code X.lora_magnitude_vector} (DoRA m) */
        MAGNITUDE,
        /** {@code E.token_adapter.trainable_tokens_delta} [k, dim]: rows that replace W[idx] */
        TOKEN_ROWS,
        /** {@code X.base_layer.weight} / {@code X.base_layer.bias}, or {@code M.weight} of modules_to_save, or a bias with bias="all": replaces a base tensor */
        REPLACE,
        /** {@code M.modules_to_save.weight}: the trained copy of a modules_to_save module; replaces {@code M.weight}, before a plain {@code M.weight} key */
        MODULES_TO_SAVE,
        /** {@code M.original_module.weight}: PEFT's copy of the untrained module, which a merge does not use */
        ORIGINAL_MODULE
    }

    public static final String PREFIX = "base_model.model.";

    /** Classifies a key; returns null for a key of a form PEFT does not write. */
    public static AdapterKey parse(String key) {
        if (!key.startsWith(PREFIX)) {
            return null;
        }
        String rest = key.substring(PREFIX.length());
        String[][] suffixes = {
                {".lora_A.weight", "LORA_A"},
                {".lora_B.weight", "LORA_B"},
                {".lora_B.bias", "LORA_B_BIAS"},
                {".lora_embedding_A", "EMBEDDING_A"},
                {".lora_embedding_B", "EMBEDDING_B"},
                {".lora_magnitude_vector.weight", "MAGNITUDE"},
                {".lora_magnitude_vector", "MAGNITUDE"},
                {".token_adapter.trainable_tokens_delta", "TOKEN_ROWS"},
        };
        for (String[] s : suffixes) {
            if (rest.endsWith(s[0]) && rest.length() > s[0].length()) {
                return new AdapterKey(Kind.valueOf(s[1]), rest.substring(0, rest.length() - s[0].length()), key);
            }
        }
        for (String[] wrapper : new String[][] {{".modules_to_save.", "MODULES_TO_SAVE"}, {".original_module.", "ORIGINAL_MODULE"}}) {
            int at = rest.indexOf(wrapper[0]);
            if (at > 0 && rest.indexOf('.', at + wrapper[0].length()) < 0) {
                // M.modules_to_save.weight -> M.weight (peft utils/other.py ModulesToSaveWrapper)
                return new AdapterKey(Kind.valueOf(wrapper[1]), rest.substring(0, at) + rest.substring(at + wrapper[0].length() - 1), key);
            }
        }
        if (rest.contains(".lora_") || rest.contains(".token_adapter.") || rest.contains(".modules_to_save.")
                || rest.contains(".original_module.")) {
            return null; // a LoRA or wrapper part in a form PEFT does not save (e.g. the adapter name left in)
        }
        if (rest.endsWith(".base_layer.weight") || rest.endsWith(".base_layer.bias")) {
            int cut = rest.lastIndexOf(".base_layer.");
            return new AdapterKey(Kind.REPLACE, rest.substring(0, cut) + rest.substring(cut + ".base_layer".length()), key);
        }
        return new AdapterKey(Kind.REPLACE, rest, key);
    }
}
