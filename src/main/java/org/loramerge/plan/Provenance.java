package org.loramerge.plan;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.Checkpoint;

/**
 * Where a merged model comes from, for its model card: the two input folders, the base model as
 * the adapter names it, the adapter's settings, and the license the base's own model card declares.
 *
 * @param base          the base model folder
 * @param adapter       the adapter folder
 * @param baseModelName adapter_config.json's base_model_name_or_path, or null
 * @param rank          r
 * @param alpha         lora_alpha
 * @param useRslora     rsLoRA scaling (alpha / sqrt(r))
 * @param useDora       DoRA
 * @param targetModules target_modules as a list (empty for a regex or all-linear rule)
 * @param baseLicense   the license lines of the base README.md's metadata block ({@code license:}, and for a license
 *                      "other" {@code license_name:} and {@code license_link:}), as written; empty when it has none
 * @param moreAdapters  the other adapter folders of a combination, in order (empty for one adapter)
 * @param combination   how the adapters were combined ({@link Combination#describe()}), or null for one adapter
 */
public record Provenance(Path base, Path adapter, String baseModelName, int rank, double alpha, boolean useRslora, boolean useDora,
                         List<String> targetModules, List<String> baseLicense, List<Path> moreAdapters, String combination) {

    /** The first adapter's settings describe the merge; a combination names the others and the method. */
    static Provenance of(Checkpoint base, List<LoraAdapter> adapters, Combination combination) throws IOException {
        AdapterConfig c = adapters.get(0).config();
        List<Path> more = adapters.subList(1, adapters.size()).stream().map(LoraAdapter::dir).toList();
        return new Provenance(base.dir(), adapters.get(0).dir(), c.baseModelNameOrPath(), c.r(), c.alpha(), c.useRslora(), c.useDora(),
                List.copyOf(c.targetModules()), license(base), more, combination == null ? null : combination.describe());
    }

    /** The base's README.md, if it has one that passed the folder's rules when the base was opened, and its license lines. */
    private static List<String> license(Checkpoint base) throws IOException {
        for (Path p : base.nonWeightFiles()) {
            if (p.getFileName().toString().equals(CarriedFiles.MODEL_CARD)) {
                return license(p);
            }
        }
        return List.of();
    }

    /** The keys of a model card's metadata that say its license (the Hub's card spec: a license "other" is named and linked). */
    private static final List<String> LICENSE_KEYS = List.of("license", "license_name", "license_link");

    /** Bytes of a model card read for its metadata block, which comes first; a card may be any size. */
    static final int CARD_HEAD_BYTES = 64 << 10;

    /**
     * The license lines of a Hugging Face model card's YAML metadata block (between the first two '---'
     * lines, within the card's first {@link #CARD_HEAD_BYTES} bytes): each of {@code license:},
     * {@code license_name:} and {@code license_link:} with a value on its line, as written, in that order;
     * empty when there is no {@code license:}.
     */
    static List<String> license(Path readme) throws IOException {
        if (!Files.isRegularFile(readme)) {
            return List.of();
        }
        byte[] head;
        try (InputStream in = Files.newInputStream(readme)) {
            head = in.readNBytes(CARD_HEAD_BYTES);
        }
        List<String> lines = new String(head, StandardCharsets.UTF_8).lines().toList();
        if (lines.isEmpty() || !lines.get(0).trim().equals("---")) {
            return List.of();
        }
        String[] found = new String[LICENSE_KEYS.size()];
        for (String line : lines.subList(1, lines.size())) {
            if (line.trim().equals("---")) {
                break;
            }
            for (int k = 0; k < found.length; k++) {
                String key = LICENSE_KEYS.get(k) + ":";
                if (found[k] == null && line.startsWith(key) && !line.substring(key.length()).isBlank()) {
                    found[k] = LICENSE_KEYS.get(k) + ": " + line.substring(key.length()).trim();
                }
            }
        }
        if (found[0] == null) {
            return List.of();
        }
        List<String> out = new ArrayList<>();
        for (String f : found) {
            if (f != null) {
                out.add(f);
            }
        }
        return List.copyOf(out);
    }
}
