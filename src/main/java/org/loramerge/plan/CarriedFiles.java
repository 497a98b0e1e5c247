package org.loramerge.plan;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.loramerge.format.InputFolder;
import org.loramerge.format.SafetensorsException;

/**
 * The non-weight files a merged model carries, and from which folder. A fine-tune that added
 * tokens or set a chat template saves its tokenizer beside the adapter (the Trainer's and axolotl's
 * output folder), and the merged model must use that tokenizer, not the base's: its embeddings
 * have the new rows. So tokenizer files in the adapter folder win over the base's; the base's
 * README.md is not carried (the merge writes its own model card, {@code pipeline.ModelCard}), and
 * everything else of the base (generation config, LICENSE and other license files, ...) is.
 */
public final class CarriedFiles {
    /** Files a tokenizer save writes that describe its tokens and templates (transformers 5 writes the first three). */
    static final Set<String> TOKENIZER_METADATA = Set.of("tokenizer_config.json", "tokenizer.json", "chat_template.jinja",
            "chat_template.json", "special_tokens_map.json", "added_tokens.json");
    /** The vocabulary files of the slow tokenizers, which adding tokens never changes. */
    static final Set<String> VOCABULARY = Set.of("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
            "merges.txt", "vocab.txt");
    static final Set<String> CHAT_TEMPLATES = Set.of("chat_template.jinja", "chat_template.json");
    /** The base's model card, replaced by the merge's own. */
    public static final String MODEL_CARD = "README.md";

    /**
     * @param files          the files to copy, sorted by name
     * @param fromAdapter    names of those taken from the adapter folder
     * @param replacedInBase names of the base's files left out because the adapter's tokenizer replaces them
     */
    public record Choice(List<Path> files, List<String> fromAdapter, List<String> replacedInBase) {
        /** The line the merge reports, or null when every file is the base's. */
        public String note() {
            if (fromAdapter.isEmpty()) {
                return null;
            }
            return "tokenizer files from the adapter folder (saved with the fine-tune): " + String.join(", ", fromAdapter)
                    + (replacedInBase.isEmpty() ? "" : "; the base's " + String.join(", ", replacedInBase) + " not carried");
        }
    }

    private CarriedFiles() {
    }

    /**
     * Chooses from the base's non-weight files and the adapter folder. When the adapter folder
     * holds a saved tokenizer (tokenizer_config.json), its tokenizer files replace all of the
     * base's, except vocabulary files it lacks (adding tokens leaves those as they were); otherwise
     * each tokenizer file there replaces the base's file of that name (a chat template replaces the
     * base's template in either form). The adapter folder's tokenizer files pass its
     * {@link InputFolder} rules (a link out of the folder is refused unless --follow-symlinks).
     *
     * @param adapterFolder the adapter folder, or null to carry the base's files only
     */
    public static Choice choose(List<Path> baseFiles, InputFolder adapterFolder) throws IOException, SafetensorsException {
        List<Path> adapterFiles = new ArrayList<>();
        if (adapterFolder != null) {
            List<Path> candidates;
            try (Stream<Path> s = Files.list(adapterFolder.dir())) {
                candidates = s.filter(p -> isTokenizerFile(name(p)) && !Files.isDirectory(p)).sorted().toList();
            }
            for (Path p : candidates) {
                adapterFiles.add(adapterFolder.check(p));
            }
        }
        Set<String> fromAdapter = new TreeSet<>();
        adapterFiles.forEach(p -> fromAdapter.add(name(p)));
        boolean savedTokenizer = fromAdapter.contains("tokenizer_config.json");
        boolean adapterTemplate = fromAdapter.stream().anyMatch(CHAT_TEMPLATES::contains);
        List<Path> files = new ArrayList<>(adapterFiles);
        List<String> replaced = new ArrayList<>();
        for (Path p : baseFiles) {
            String n = name(p);
            if (n.equals(MODEL_CARD)) {
                continue;
            }
            boolean superseded = fromAdapter.contains(n)
                    || savedTokenizer && TOKENIZER_METADATA.contains(n)
                    || adapterTemplate && CHAT_TEMPLATES.contains(n);
            if (superseded) {
                if (!fromAdapter.contains(n)) {
                    replaced.add(n);
                }
                continue;
            }
            files.add(p);
        }
        files.sort((a, b) -> name(a).compareTo(name(b)));
        return new Choice(files, List.copyOf(fromAdapter), replaced);
    }

    static boolean isTokenizerFile(String name) {
        return TOKENIZER_METADATA.contains(name) || VOCABULARY.contains(name);
    }

    private static String name(Path p) {
        return p.getFileName().toString();
    }
}
