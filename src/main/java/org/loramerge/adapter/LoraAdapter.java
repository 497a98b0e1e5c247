package org.loramerge.adapter;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.format.InputFolder;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

import static org.loramerge.adapter.AdapterException.Reason.PICKLE;
import static org.loramerge.adapter.AdapterException.Reason.UNKNOWN_KEY;

/**
 * A PEFT LoRA adapter folder: its config and its weights, with every key classified. The merge is
 * driven by the keys present in the file; the config supplies scales, DoRA and fan_in_fan_out.
 */
public final class LoraAdapter implements AutoCloseable {
    public static final String CONFIG = "adapter_config.json";
    public static final String WEIGHTS = "adapter_model.safetensors";

    private final Path dir;
    private final AdapterConfig config;
    private final SafetensorsFile file;
    private final Map<String, AdapterKey> keys;
    private final InputFolder folder;

    private LoraAdapter(Path dir, AdapterConfig config, SafetensorsFile file, Map<String, AdapterKey> keys, InputFolder folder) {
        this.dir = dir;
        this.folder = folder;
        this.config = config;
        this.file = file;
        this.keys = keys;
    }

    /** Opens an adapter folder; symbolic links may not leave it (or its Hugging Face cache repository). */
    public static LoraAdapter open(Path dir) throws AdapterException, SafetensorsException, IOException {
        return open(dir, false);
    }

    /**
     * Opens an adapter folder; its files pass {@link InputFolder}'s rules before they are read.
     *
     * @param followSymlinks read files wherever their links lead (--follow-symlinks)
     */
    public static LoraAdapter open(Path dir, boolean followSymlinks) throws AdapterException, SafetensorsException, IOException {
        if (!Files.isDirectory(dir)) {
            throw new IOException(dir + " is not a folder; pass the adapter folder PEFT's save_pretrained wrote");
        }
        InputFolder folder = InputFolder.of(dir, followSymlinks);
        Path weights = dir.resolve(WEIGHTS);
        if (!Files.exists(weights, LinkOption.NOFOLLOW_LINKS)) {
            if (Files.exists(dir.resolve("adapter_model.bin"))) {
                throw new AdapterException(PICKLE, dir.resolve("adapter_model.bin"),
                        "is a Python pickle, which loramerge never loads because unpickling runs code; re-save the adapter with "
                                + "PeftModel.save_pretrained(dir, safe_serialization=True) to get adapter_model.safetensors");
            }
            throw new IOException(dir + " has no " + WEIGHTS + "; pass the folder PEFT's save_pretrained wrote");
        }
        Path configFile = dir.resolve(CONFIG);
        AdapterConfig config = AdapterConfig.read(Files.exists(configFile, LinkOption.NOFOLLOW_LINKS) ? folder.check(configFile) : configFile);
        SafetensorsFile file = SafetensorsFile.open(folder.check(weights));
        boolean ok = false;
        try {
            Map<String, AdapterKey> keys = new LinkedHashMap<>();
            List<String> unknown = new ArrayList<>();
            for (TensorInfo t : file.tensors()) {
                AdapterKey k = AdapterKey.parse(t.name());
                if (k == null) {
                    unknown.add(t.name());
                } else {
                    keys.put(t.name(), k);
                }
            }
            if (!unknown.isEmpty()) {
                throw new AdapterException(UNKNOWN_KEY, weights, "keys of a form PEFT does not save: " + abbreviate(unknown)
                        + "; expected base_model.model.<module>.lora_A.weight and the other forms of PEFT's save_pretrained");
            }
            ok = true;
            return new LoraAdapter(dir, config, file, keys, folder);
        } finally {
            if (!ok) {
                file.close();
            }
        }
    }

    static String abbreviate(List<String> names) {
        int shown = Math.min(names.size(), 5);
        String s = String.join(", ", names.subList(0, shown));
        return names.size() > shown ? s + " and " + (names.size() - shown) + " more" : s;
    }

    public Path dir() {
        return dir;
    }

    /** The adapter folder and its rules, for any other file read from it (tokenizer files saved with the fine-tune). */
    public InputFolder folder() {
        return folder;
    }

    public AdapterConfig config() {
        return config;
    }

    public SafetensorsFile file() {
        return file;
    }

    /** Every key of the file, classified, in file order. */
    public Map<String, AdapterKey> keys() {
        return keys;
    }

    public TensorInfo tensor(String key) {
        return file.tensor(key);
    }

    @Override
    public void close() throws IOException {
        file.close();
    }
}
