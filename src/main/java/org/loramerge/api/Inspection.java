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
 * @param quantization model with quantized weights (bitsandbytes, FP8, GPTQ, AWQ): its format and each weight
 * @param warnings   things worth knowing about the input
 */
public record Inspection(String kind, String path, Boolean sharded, Integer shards, Map<String, String> metadata, long totalBytes,
                         List<TensorEntry> tensors, Integer r, Double loraAlpha, Boolean useRslora, Boolean useDora, List<ModuleEntry> modules,
                         Quantization quantization, List<String> warnings) {

    /** One tensor of the header. */
    public record TensorEntry(String name, String dtype, List<Long> shape, long bytes) {
    }

    /**
     * One adapter module: the kinds of its keys (lora_a, lora_b, magnitude, ...) and, for a LoRA
     * module, the rank, alpha and scale after rank_pattern, alpha_pattern and rsLoRA (null otherwise).
     */
    public record ModuleEntry(String module, String parts, Integer rank, Double alpha, Double scale) {
    }

    /**
     * A model's quantization: the format and each quantized weight, or, for a format loramerge
     * cannot read, only why ({@code refused}: the reason a merge would give; format and weights
     * are then null).
     *
     * @param format   the format's name, such as {@code bitsandbytes 4-bit NF4}
     * @param weights  every quantized weight, in checkpoint order
     * @param warnings things worth knowing about the quantization
     * @param refused  why loramerge cannot read it, or null
     */
    public record Quantization(String format, List<QuantizedWeightEntry> weights, List<String> warnings, String refused) {
    }

    /**
     * One quantized weight: the name it dequantizes to, the dtype and shape of the dequantized
     * weight, its settings in words, and the stored tensors of its group.
     */
    public record QuantizedWeightEntry(String name, String dtype, List<Long> shape, String description, List<String> tensors) {
    }
}
