package org.loramerge.plan;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.ArrayList;
import java.util.Collection;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.format.DType;
import org.loramerge.format.TensorInfo;

/**
 * What {@code extract} will compute, decided from the two models' headers and configs before any
 * value is read: the weights that get low-rank factors ({@link Target}), the other tensors, which
 * are compared and, where changed, saved whole or reported ({@link Other}), and how the PEFT
 * adapter's keys and config are spelled (docs/FORMATS.md §1, §2, §11).
 *
 * @param targets     weights that get a LoRA pair, in base order
 * @param others      every other tensor, in base order
 * @param options     what was asked
 * @param taskType    PEFT's task_type for the base's architecture, or null
 * @param warnings    things the user should know
 */
public record ExtractPlan(List<Target> targets, List<Other> others, ExtractOptions options, String taskType, List<String> warnings) {
    /**
     * A weight that gets low-rank factors: ΔW = tuned − base as a matrix [rows, cols] (the weight as
     * stored, trailing dimensions flattened), whose truncated SVD U·Σ·Vᵀ becomes lora_B·lora_A with
     * √σ on each side (scale alpha / r = 1). For {@link Layout#LINEAR} lora_B = U·√Σ [rows, r] and
     * lora_A = √Σ·Vᵀ [r, cols]; for {@link Layout#CONV1D} and {@link Layout#EMBEDDING}, whose weight
     * holds (B·A)ᵀ, lora_B = V·√Σ [cols, r] and lora_A = √Σ·Uᵀ [r, rows].
     *
     * @param module     the module's name as PEFT knows it: transformers' loaded name, which differs from the
     *                   checkpoint's for a vision-language model (docs/FORMATS.md §1.4)
     * @param factorType the dtype the factors are written in
     */
    public record Target(String module, Layout layout, TensorSource base, TensorSource tuned, long[] shape, DType factorType) {
        public int rows() {
            return Math.toIntExact(shape[0]);
        }

        public int cols() {
            return Math.toIntExact(TensorInfo.numElements(shape) / shape[0]);
        }

        public String weightName() {
            return module + ".weight";
        }

        /** The adapter key of lora_A (lora_embedding_A for an embedding). */
        public String keyA() {
            return AdapterKey.PREFIX + module + (layout == Layout.EMBEDDING ? ".lora_embedding_A" : ".lora_A.weight");
        }

        /** The adapter key of lora_B (lora_embedding_B for an embedding). */
        public String keyB() {
            return AdapterKey.PREFIX + module + (layout == Layout.EMBEDDING ? ".lora_embedding_B" : ".lora_B.weight");
        }

        /** The key of the tuned weight itself when its module is saved whole (modules_to_save). */
        public String savedWeightKey() {
            return AdapterKey.PREFIX + weightName();
        }

        /** lora_A's shape at rank r. */
        public long[] shapeA(int r) {
            return layout == Layout.LINEAR ? new long[] {r, cols()} : new long[] {r, rows()};
        }

        /** lora_B's shape at rank r. */
        public long[] shapeB(int r) {
            return layout == Layout.LINEAR ? new long[] {rows(), r} : new long[] {cols(), r};
        }
    }

    /**
     * A tensor without low-rank factors: compared, and when changed, saved whole or reported.
     *
     * @param name          the tensor's name as PEFT knows it (transformers' loaded name, as {@link Target#module})
     * @param module        the module it belongs to (its name without the last segment)
     * @param resized       the vocabulary tensor has more or fewer rows in the tuned model
     * @param biasOfTarget  it is the bias of a {@link Target}'s module
     */
    public record Other(String name, String module, TensorSource base, TensorSource tuned, boolean resized, boolean biasOfTarget) {
        /** The key PEFT saves a modules_to_save module's tensor under: the plain name. */
        public String savedKey() {
            return AdapterKey.PREFIX + name;
        }

        /** The key of a targeted layer's bias with bias "lora_only": {@code X.base_layer.bias}. */
        public String baseLayerBiasKey() {
            return AdapterKey.PREFIX + module + ".base_layer.bias";
        }
    }

    public ExtractPlan {
        targets = List.copyOf(targets);
        others = List.copyOf(others);
        warnings = List.copyOf(warnings);
    }

    /**
     * adapter_config.json for the modules extracted. The most common rank is {@code r}, the others
     * go to rank_pattern, and every module's alpha equals its rank, so that PEFT's scale
     * lora_alpha / r is exactly 1 (pattern keys are the full module names with their dots escaped:
     * PEFT matches them with {@code re.match(rf"(.*\.)?({key})$", name)}).
     *
     * @param ranks          module name to its rank, in the order to list them
     * @param modulesToSave  modules written whole
     * @param loraOnlyBias   some targeted layer's bias is written ({@code bias: "lora_only"})
     */
    public ObjectNode adapterConfig(Map<String, Integer> ranks, Collection<String> modulesToSave, boolean loraOnlyBias) {
        Map<Integer, Integer> count = new LinkedHashMap<>();
        for (int r : ranks.values()) {
            count.merge(r, 1, Integer::sum);
        }
        int r = options.rank(); // the most common rank; the larger of equally common ones
        int best = 0;
        for (Map.Entry<Integer, Integer> e : count.entrySet()) {
            if (e.getValue() > best || e.getValue() == best && e.getKey() > r) {
                best = e.getValue();
                r = e.getKey();
            }
        }
        JsonNodeFactory f = JsonNodeFactory.instance;
        ObjectNode c = f.objectNode();
        c.put("peft_type", "LORA");
        if (taskType == null) {
            c.putNull("task_type");
        } else {
            c.put("task_type", taskType);
        }
        if (options.baseName() == null) {
            c.putNull("base_model_name_or_path");
        } else {
            c.put("base_model_name_or_path", options.baseName());
        }
        c.put("r", r);
        c.put("lora_alpha", r);
        ArrayNode targetModules = c.putArray("target_modules");
        ObjectNode rankPattern = c.putObject("rank_pattern");
        ObjectNode alphaPattern = c.putObject("alpha_pattern");
        boolean conv1d = false;
        for (Map.Entry<String, Integer> e : ranks.entrySet()) {
            targetModules.add(e.getKey());
            if (e.getValue() != r) {
                rankPattern.put(patternKey(e.getKey()), e.getValue());
                alphaPattern.put(patternKey(e.getKey()), e.getValue());
            }
        }
        for (Target t : targets) {
            conv1d |= ranks.containsKey(t.module()) && t.layout() == Layout.CONV1D;
        }
        if (modulesToSave.isEmpty()) {
            c.putNull("modules_to_save");
        } else {
            ArrayNode m = c.putArray("modules_to_save");
            modulesToSave.forEach(m::add);
        }
        c.put("bias", loraOnlyBias ? "lora_only" : "none");
        c.put("fan_in_fan_out", conv1d);
        c.put("lora_dropout", 0.0);
        c.put("use_rslora", false);
        c.put("use_dora", false);
        c.put("lora_bias", false);
        c.put("init_lora_weights", true);
        c.put("inference_mode", true);
        return c;
    }

    /** A full module name as a PEFT pattern key that matches only that module: every character but letters, digits and _ escaped. */
    static String patternKey(String module) {
        StringBuilder sb = new StringBuilder();
        for (char ch : module.toCharArray()) {
            if (!Character.isLetterOrDigit(ch) && ch != '_') {
                sb.append('\\');
            }
            sb.append(ch);
        }
        return sb.toString();
    }

    /** The targets' module names, in order. */
    public List<String> targetModules() {
        List<String> out = new ArrayList<>();
        targets.forEach(t -> out.add(t.module()));
        return out;
    }
}
