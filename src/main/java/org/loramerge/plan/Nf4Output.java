package org.loramerge.plan;

import java.util.List;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantState;

/**
 * An output weight written as a bitsandbytes NF4 tensor group ({@code merge --to nf4}): the merged
 * values, rounded once to the quant state's dtype, requantized with the base weight's blocksize
 * and double-quantization setting.
 *
 * <p>A file's header is written before its data, so every tensor's length must be known at plan
 * time. All are but one: the quant state JSON holds the double-quantization offset (the mean
 * absmax of the merged weight), whose decimal form varies in length and is known only after the
 * last block. The plan reserves {@link QuantState#maxJsonLength} bytes and the JSON is padded with
 * spaces to that length, which bitsandbytes' {@code json.loads} ignores (utils.py
 * unpack_tensor_to_dict). The alternative, a first pass over the merged weight for its absmax
 * values, would compute every merge twice. Without double quantization the JSON has a fixed length
 * and is written exactly as bitsandbytes writes it.
 *
 * @param template        the output quant state with a placeholder offset (its blocksize, dtype, shape, nesting)
 * @param quantStateBytes the reserved length of the quant state tensor
 */
public record Nf4Output(QuantState template, int quantStateBytes) {
    public static Nf4Output of(QuantState template) {
        return new Nf4Output(template, template.maxJsonLength());
    }

    /** The group's tensors as the output header lists them, {@code P.weight} first. */
    public List<SafetensorsWriter.Entry> entries(String weightName) {
        return Nf4Tensor.layout(weightName, template, quantStateBytes);
    }
}
