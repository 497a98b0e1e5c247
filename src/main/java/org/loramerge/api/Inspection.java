package org.loramerge.api;

import java.util.List;
import java.util.Map;

/**
 * What {@link LoraMerge#inspect} found in a model folder, an adapter folder or one safetensors file.
 * Fields that do not apply to the kind are null (the {@code inspect --json} output leaves them out).
 *
 * @param kind       {@code model}, {@code adapter} or {@code safetensors}
 * @param path       the folder or file inspected
 * @param sharded    model: whether it is split into shards
 * @param shards     model: the number of safetensors files
 * @param metadata   safetensors file: its header's {@code __metadata__}
 * @param totalBytes tensor bytes
 * @param tensors    every tensor, in file order
 * @param r          adapter: r
 * @param loraAlpha  adapter: lora_alpha
 * @param useRslora  adapter: use_rslora
 * @param useDora    adapter: use_dora
 * @param modules    adapter: every module with its key parts and resolved rank, alpha and scale
 * @param warnings   things worth knowing about the input
 */
public record Inspection(String kind, String path, Boolean sharded, Integer shards, Map<String, String> metadata, long totalBytes,
                         List<TensorEntry> tensors, Integer r, Double loraAlpha, Boolean useRslora, Boolean useDora, List<ModuleEntry> modules,
                         List<String> warnings) {

    /** One tensor of the header. */
    public record TensorEntry(String name, String dtype, List<Long> shape, long bytes) {
    }

    /**
     * One adapter module: the kinds of its keys (lora_a, lora_b, magnitude, ...) and, for a LoRA
     * module, the rank, alpha and scale after rank_pattern, alpha_pattern and rsLoRA (null otherwise).
     */
    public record ModuleEntry(String module, String parts, Integer rank, Double alpha, Double scale) {
    }
}
