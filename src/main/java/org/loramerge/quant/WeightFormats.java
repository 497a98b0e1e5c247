package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.util.List;
import org.loramerge.format.Checkpoint;

/** The weight formats loramerge reads, and the one a checkpoint uses. */
public final class WeightFormats {
    /** Every format, in the order they are tried. */
    public static final List<WeightFormat> ALL = List.of(BnbInt8Format.INSTANCE, BnbNf4Format.INSTANCE, Fp8Format.INSTANCE,
            PackedIntFormat.INSTANCE);

    private WeightFormats() {
    }

    /**
     * The quantized weights of {@code checkpoint} in whichever format it uses, or
     * {@link QuantizedModel#none()} for a checkpoint without quantized weights.
     */
    public static QuantizedModel detect(Checkpoint checkpoint) throws QuantException, IOException {
        for (WeightFormat f : ALL) {
            QuantizedModel m = f.detect(checkpoint);
            if (m.usesFormat()) {
                return m;
            }
        }
        JsonNode q = checkpoint.config() == null ? null : checkpoint.config().get("quantization_config");
        if (q != null && !q.isNull()) {
            // a quantization loramerge does not know may store weights it would misread as dense ones
            String method = q.path("quant_method").asText("(none)");
            throw new QuantException(QuantException.Reason.UNSUPPORTED_CONFIG, checkpoint.dir().resolve("config.json"), null,
                    "quantization_config.quant_method is \"" + method + "\"; loramerge reads " + SUPPORTED
                    + ": merge into the original 16-bit model instead");
        }
        return QuantizedModel.none();
    }

    /** What loramerge reads, for messages. */
    static final String SUPPORTED = "bitsandbytes 4-bit (NF4, FP4) and 8-bit (LLM.int8), FP8 (transformers' fine-grained \"fp8\", compressed-tensors' float-quantized), "
            + "GPTQ (\"gptq\", \"gptq_v2\") and AWQ (GEMM)";
}
