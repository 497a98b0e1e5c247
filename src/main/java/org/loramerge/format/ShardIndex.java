package org.loramerge.format;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

import static org.loramerge.format.SafetensorsException.Reason.INVALID_INDEX;

/**
 * {@code model.safetensors.index.json}: which shard file holds each tensor, and the total tensor
 * bytes. Shard names must be plain file names inside the model folder: an index is input like any
 * other, and a name such as {@code ../../etc/passwd} or {@code /dev/zero} is rejected.
 */
public final class ShardIndex {
    public static final String FILE_NAME = "model.safetensors.index.json";

    private final Map<String, String> weightMap;
    private final Long totalSize;

    public ShardIndex(Map<String, String> weightMap, Long totalSize) {
        this.weightMap = weightMap;
        this.totalSize = totalSize;
    }

    public Map<String, String> weightMap() {
        return weightMap;
    }

    /** The index's {@code metadata.total_size}, or null where it has none. */
    public Long totalSize() {
        return totalSize;
    }

    public static ShardIndex read(Path indexFile) throws SafetensorsException {
        JsonNode root;
        byte[] bytes = InputFolder.readBounded(indexFile, InputFolder.MAX_INDEX_BYTES, "a shard index");
        try {
            root = SafetensorsFile.JSON.readTree(bytes);
        } catch (JsonProcessingException e) {
            throw new SafetensorsException(INVALID_INDEX, indexFile, null, "not valid JSON: " + e.getOriginalMessage()
                    + "; the file is damaged: download the model again", e);
        } catch (IOException e) {
            throw new SafetensorsException(SafetensorsException.Reason.IO, indexFile, null, "cannot read: " + e.getMessage(), e);
        }
        if (root == null || !root.isObject()) {
            throw new SafetensorsException(INVALID_INDEX, indexFile, null, "not a JSON object");
        }
        JsonNode map = root.get("weight_map");
        if (map == null || !map.isObject()) {
            throw new SafetensorsException(INVALID_INDEX, indexFile, null, "has no \"weight_map\" object");
        }
        Map<String, String> weightMap = new LinkedHashMap<>();
        for (Map.Entry<String, JsonNode> e : map.properties()) {
            if (!e.getValue().isTextual()) {
                throw new SafetensorsException(INVALID_INDEX, indexFile, e.getKey(), "weight_map value is not a file name");
            }
            String file = e.getValue().textValue();
            checkPlainFileName(indexFile, e.getKey(), file);
            weightMap.put(e.getKey(), file);
        }
        Long total = null;
        JsonNode meta = root.get("metadata");
        if (meta != null && meta.isObject() && meta.has("total_size")) {
            JsonNode t = meta.get("total_size");
            if (t.canConvertToLong() && t.asLong() >= 0) {
                total = t.asLong();
            }
        }
        return new ShardIndex(weightMap, total);
    }

    /** safetensors index: a shard is a file in the model folder, named without any path. */
    static void checkPlainFileName(Path indexFile, String tensor, String file) throws SafetensorsException {
        boolean plain = !file.isEmpty()
                && !file.equals(".") && !file.equals("..")
                && file.indexOf('/') < 0 && file.indexOf('\\') < 0 && file.indexOf('\0') < 0
                && !file.startsWith("~");
        if (!plain) {
            throw new SafetensorsException(INVALID_INDEX, indexFile, tensor,
                    "shard name \"" + file + "\" is not a plain file name inside the model folder; refusing to read outside it. Fix weight_map to name files in the model folder, or download the model again");
        }
    }

    /** The index JSON as transformers writes it: metadata.total_size in bytes, weight_map sorted by tensor name. */
    public static byte[] toJson(Map<String, String> weightMap, long totalSize) {
        ObjectNode root = SafetensorsFile.JSON.createObjectNode();
        root.putObject("metadata").put("total_size", totalSize);
        ObjectNode map = root.putObject("weight_map");
        weightMap.keySet().stream().sorted().forEach(k -> map.put(k, weightMap.get(k)));
        try {
            return SafetensorsFile.JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(root);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }
}
