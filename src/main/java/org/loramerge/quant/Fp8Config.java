package org.loramerge.quant;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.List;

/**
 * config.json's {@code quantization_config} for transformers' fine-grained FP8 layout, as
 * transformers 5 writes it: {@code FineGrainedFP8Config.to_dict()} (utils/quantization_config.py),
 * keys sorted as {@code save_pretrained} sorts them. transformers' class has no {@code fmt} key: the
 * weights are e4m3 ({@code float8_e4m3fn}) by the tensors' dtype.
 */
public final class Fp8Config {
    private Fp8Config() {
    }

    /**
     * Dynamic activations, {@link Fp8Output#BLOCK} x {@link Fp8Output#BLOCK} weight blocks, float
     * scales, not dequantized on load.
     *
     * @param modulesToNotConvert the modules transformers keeps dense, or null for its default (the
     *                            output embedding)
     */
    public static ObjectNode toJson(List<String> modulesToNotConvert) {
        JsonNodeFactory f = JsonNodeFactory.instance;
        ObjectNode q = f.objectNode();
        q.put("activation_scheme", "dynamic");
        q.put("dequantize", false);
        q.putNull("modules_to_convert");
        if (modulesToNotConvert == null) {
            q.putNull("modules_to_not_convert");
        } else {
            ArrayNode a = q.putArray("modules_to_not_convert");
            modulesToNotConvert.forEach(a::add);
        }
        q.put("quant_method", "fp8");
        q.put("scale_fmt", "float");
        q.putArray("weight_block_size").add(Fp8Output.BLOCK).add(Fp8Output.BLOCK);
        return q;
    }
}
