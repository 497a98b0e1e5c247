package org.loramerge.format;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import static org.loramerge.format.SafetensorsException.Reason.INDEX_MISMATCH;

/**
 * A Hugging Face model folder: {@code config.json} and its tensors, in one
 * {@code model.safetensors} or in shards listed by {@code model.safetensors.index.json}.
 * Every file is opened read-only, and only after the folder's rules allow it ({@link InputFolder}:
 * regular files, links that stay in the folder or its Hugging Face cache).
 */
public final class Checkpoint implements AutoCloseable {
    private final Path dir;
    private final List<Path> nonWeightFiles;
    private final ObjectNode config;
    private final List<SafetensorsFile> files;
    private final Map<String, SafetensorsFile> fileOf;
    private final Map<String, TensorInfo> tensors;
    private final boolean sharded;
    private final List<String> warnings;

    private Checkpoint(Path dir, List<Path> nonWeightFiles, ObjectNode config, List<SafetensorsFile> files, Map<String, SafetensorsFile> fileOf,
                       Map<String, TensorInfo> tensors, boolean sharded, List<String> warnings) {
        this.dir = dir;
        this.nonWeightFiles = nonWeightFiles;
        this.config = config;
        this.files = files;
        this.fileOf = fileOf;
        this.tensors = tensors;
        this.sharded = sharded;
        this.warnings = warnings;
    }

    /** Opens a model folder; symbolic links may not leave it (or its Hugging Face cache repository). */
    public static Checkpoint open(Path dir) throws SafetensorsException, IOException {
        return open(dir, false);
    }

    /**
     * Opens a model folder.
     *
     * @param followSymlinks read files wherever their links lead (--follow-symlinks)
     */
    public static Checkpoint open(Path dir, boolean followSymlinks) throws SafetensorsException, IOException {
        if (!Files.isDirectory(dir)) {
            throw new IOException(dir + " is not a folder; pass the model folder that holds config.json and the .safetensors files");
        }
        InputFolder folder = InputFolder.of(dir, followSymlinks);
        ObjectNode config = readConfig(folder);
        List<Path> carried = nonWeightFiles(folder);
        Path index = dir.resolve(ShardIndex.FILE_NAME);
        Path single = dir.resolve("model.safetensors");
        List<SafetensorsFile> files = new ArrayList<>();
        Map<String, SafetensorsFile> fileOf = new LinkedHashMap<>();
        Map<String, TensorInfo> tensors = new LinkedHashMap<>();
        List<String> warnings = new ArrayList<>();
        boolean ok = false;
        try {
            if (Files.exists(index, LinkOption.NOFOLLOW_LINKS)) {
                ShardIndex idx = ShardIndex.read(folder.check(index));
                Map<String, SafetensorsFile> byName = new LinkedHashMap<>();
                for (String shard : new java.util.TreeSet<>(idx.weightMap().values())) { // model-00001-of-... sorts in shard order
                    Path p = dir.resolve(shard);
                    if (!Files.exists(p, LinkOption.NOFOLLOW_LINKS)) {
                        throw new SafetensorsException(INDEX_MISMATCH, index, null,
                                "names shard \"" + shard + "\", which is not a file in " + dir + "; the download is incomplete: download the model again");
                    }
                    SafetensorsFile f = SafetensorsFile.open(folder.check(p));
                    files.add(f);
                    byName.put(shard, f);
                }
                // an index that disagrees with its shards is damaged: transformers would silently drop a tensor it does not list
                for (SafetensorsFile f : files) {
                    String shard = f.path().getFileName().toString();
                    for (TensorInfo t : f.tensors()) {
                        String mapped = idx.weightMap().get(t.name());
                        if (mapped == null) {
                            throw new SafetensorsException(INDEX_MISMATCH, index, t.name(), "shard " + shard + " holds this tensor but the index "
                                    + "does not list it, so a loader would leave it out of the model; the index and its shards disagree: "
                                    + "download the model again");
                        }
                        if (byName.get(mapped) != f) {
                            throw new SafetensorsException(INDEX_MISMATCH, index, t.name(), "shard " + shard + " holds this tensor but the index "
                                    + "places it in " + mapped + "; the index and its shards disagree: download the model again");
                        }
                        tensors.put(t.name(), t);
                        fileOf.put(t.name(), f);
                    }
                }
                for (Map.Entry<String, String> e : idx.weightMap().entrySet()) {
                    if (!tensors.containsKey(e.getKey())) {
                        throw new SafetensorsException(INDEX_MISMATCH, index, e.getKey(),
                                "the index places this tensor in " + e.getValue() + ", which does not hold it");
                    }
                }
                long total = 0;
                for (TensorInfo t : tensors.values()) {
                    total += t.sizeInBytes();
                }
                if (idx.totalSize() != null && idx.totalSize() != total) {
                    warnings.add(ShardIndex.FILE_NAME + " says total_size " + idx.totalSize() + " but the tensors hold " + total
                            + " bytes (some tools write it wrong); the output index will say " + total);
                }
                ok = true;
                return new Checkpoint(dir, carried, config, files, fileOf, Collections.unmodifiableMap(tensors), true, warnings);
            }
            if (Files.exists(single, LinkOption.NOFOLLOW_LINKS)) {
                SafetensorsFile f = SafetensorsFile.open(folder.check(single));
                files.add(f);
                for (TensorInfo t : f.tensors()) {
                    tensors.put(t.name(), t);
                    fileOf.put(t.name(), f);
                }
                ok = true;
                return new Checkpoint(dir, carried, config, files, fileOf, Collections.unmodifiableMap(tensors), false, warnings);
            }
            if (Files.exists(dir.resolve("pytorch_model.bin")) || Files.exists(dir.resolve("pytorch_model.bin.index.json"))) {
                throw new IOException(dir + " holds pytorch_model.bin (a Python pickle), which loramerge does not read because "
                        + "unpickling runs code; convert it to safetensors first (transformers: save_pretrained(safe_serialization=True))");
            }
            throw new IOException(dir + " has neither model.safetensors nor " + ShardIndex.FILE_NAME + "; pass a Hugging Face model folder");
        } finally {
            if (!ok) {
                for (SafetensorsFile f : files) {
                    f.close();
                }
            }
        }
    }

    private static ObjectNode readConfig(InputFolder folder) throws IOException, SafetensorsException {
        Path p = folder.dir().resolve("config.json");
        if (!Files.exists(p, LinkOption.NOFOLLOW_LINKS)) {
            return null;
        }
        byte[] bytes = InputFolder.readBounded(folder.check(p), InputFolder.MAX_CONFIG_BYTES, "a config.json");
        try {
            JsonNode n = SafetensorsFile.JSON.readTree(bytes);
            if (!(n instanceof ObjectNode)) {
                throw new IOException(p + " is not a JSON object; fix or remove it");
            }
            return (ObjectNode) n;
        } catch (JsonProcessingException e) {
            throw new IOException(p + " is not valid JSON (" + e.getOriginalMessage() + "); fix it", e);
        }
    }

    public Path dir() {
        return dir;
    }

    /** config.json, or null when the folder has none. Callers must copy before changing it. */
    public ObjectNode config() {
        return config;
    }

    /** Tensors in file order (shard by shard). */
    public Map<String, TensorInfo> tensors() {
        return tensors;
    }

    public TensorInfo tensor(String name) {
        return tensors.get(name);
    }

    public SafetensorsFile fileOf(String tensorName) {
        return fileOf.get(tensorName);
    }

    public List<SafetensorsFile> files() {
        return files;
    }

    public boolean isSharded() {
        return sharded;
    }

    public List<String> warnings() {
        return warnings;
    }

    /** Architectures whose linear layers are transformers' Conv1D (weight [in, out], not [out, in]). */
    private static final java.util.Set<String> CONV1D_MODEL_TYPES = java.util.Set.of("gpt2", "gpt_bigcode", "decision_transformer", "imagegpt");
    private static final java.util.Set<String> WEIGHT_EXTENSIONS = java.util.Set.of(
            ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx");

    /** config.json's model_type, or "" when there is none. */
    public String modelType() {
        return config == null ? "" : config.path("model_type").asText("").toLowerCase(java.util.Locale.ROOT);
    }

    /** True when config.json names an architecture whose linear layers are transformers' Conv1D (GPT-2 and kin). */
    public boolean usesConv1D() {
        return CONV1D_MODEL_TYPES.contains(modelType());
    }

    /**
     * The folder's files that a derived model carries over as they are: everything but weights,
     * indexes, config.json (rewritten), a PEFT adapter's files ({@link #adapterFiles()}), hidden files
     * and subfolders (tokenizer, generation config, chat template, ...). Each has passed the folder's
     * rules when the checkpoint was opened.
     */
    public List<Path> nonWeightFiles() throws IOException {
        return nonWeightFiles;
    }

    /** The files {@link #nonWeightFiles()} lists, checked now so that a refused one stops the work before anything is written. */
    private static List<Path> nonWeightFiles(InputFolder folder) throws IOException, SafetensorsException {
        List<Path> out = new ArrayList<>();
        List<Path> entries;
        try (Stream<Path> s = Files.list(folder.dir())) {
            entries = s.sorted().toList();
        }
        for (Path p : entries) {
            String n = p.getFileName().toString();
            boolean weight = WEIGHT_EXTENSIONS.stream().anyMatch(n::endsWith) || n.equals(ShardIndex.FILE_NAME)
                    || n.equals("pytorch_model.bin.index.json");
            if (n.startsWith(".") || weight || n.equals("config.json") || isAdapterFile(n) || Files.isDirectory(p)) {
                continue;
            }
            out.add(folder.check(p));
        }
        return Collections.unmodifiableList(out);
    }

    /**
     * A PEFT adapter's files in this folder (adapter_config.json, adapter_model.*): never carried into
     * a merged or quantized model, which loaders would otherwise take for an adapter.
     */
    public List<String> adapterFiles() throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).filter(Checkpoint::isAdapterFile).sorted().toList();
        }
    }

    /** peft utils/constants.py: CONFIG_NAME, and the weights as save_pretrained names them (SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME). */
    private static boolean isAdapterFile(String name) {
        return name.equals("adapter_config.json") || name.startsWith("adapter_model.");
    }

    public long totalTensorBytes() {
        long total = 0;
        for (TensorInfo t : tensors.values()) {
            total += t.sizeInBytes();
        }
        return total;
    }

    @Override
    public void close() throws IOException {
        IOException first = null;
        for (SafetensorsFile f : files) {
            try {
                f.close();
            } catch (IOException e) {
                if (first == null) {
                    first = e;
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }
}
