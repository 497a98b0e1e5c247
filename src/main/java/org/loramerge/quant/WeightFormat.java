package org.loramerge.quant;

import java.io.IOException;
import org.loramerge.format.Checkpoint;

/**
 * One way checkpoints store weights in fewer bits than their compute dtype (bitsandbytes NF4
 * today). A format finds its weights in a checkpoint from config.json and the tensors, and each
 * weight it finds ({@link QuantizedWeight}) can be described, dequantized by rows and
 * requantized ({@link QuantizedOutput}). The merge treats every format alike: a quantized weight
 * reads as its dequantized values, and a requantized output is written by the format's own
 * {@link Requantizer}. Engines that have device kernels for a format (the GPU engine for NF4)
 * recognise its weight class and use them; all other formats run on the CPU codec.
 *
 * <p>The formats loramerge knows are listed in {@link WeightFormats}.
 */
public interface WeightFormat {
    /** The format's name for messages and {@code inspect}, e.g. "bitsandbytes 4-bit NF4". */
    String name();

    /** The name for a model this format found, where its variants differ in a model's weights (by default {@link #name()}). */
    default String name(QuantizedModel model) {
        return name();
    }

    /**
     * The checkpoint's weights in this format; {@link QuantizedModel#none()} when it does not use
     * the format at all.
     *
     * @throws QuantException when it uses the format in a way loramerge cannot read (an unsupported
     *                        variant, an incomplete group, a malformed quant state)
     */
    QuantizedModel detect(Checkpoint checkpoint) throws QuantException, IOException;
}
