package org.loramerge.quant;

import java.util.List;
import org.loramerge.format.SafetensorsWriter;

/**
 * A weight written as a bitsandbytes NF4 tensor group ({@code merge --to nf4}): the merged values,
 * rounded once to the quant state's dtype, requantized with the base weight's blocksize and
 * double-quantization setting ({@link Nf4Requantizer}).
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
 * @param warnings        settings of the base the output cannot keep
 */
public record Nf4Output(QuantState template, int quantStateBytes, List<String> warnings) implements QuantizedOutput {
    public Nf4Output {
        warnings = List.copyOf(warnings);
    }

    /**
     * The output of a weight requantized with {@code base}'s settings. Double quantization is
     * written with bitsandbytes' nested blocksize of 256 whatever the base's.
     */
    public static Nf4Output requantizing(QuantState base) {
        QuantState.Nested nested = base.isDoubleQuant() ? new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, 0f) : null;
        QuantState template = QuantState.of(base.blocksize(), base.dtype(), base.shape(), nested);
        List<String> warnings = base.isDoubleQuant() && base.nested().blocksize() != DoubleQuant.NESTED_BLOCKSIZE
                ? List.of("has nested blocks of " + base.nested().blocksize() + "; its requantized absmax uses " + DoubleQuant.NESTED_BLOCKSIZE
                        + ", as bitsandbytes always does")
                : List.of();
        return new Nf4Output(template, template.maxJsonLength(), warnings);
    }

    @Override
    public List<SafetensorsWriter.Entry> entries(String weightName) {
        return Nf4Tensor.layout(weightName, template, quantStateBytes);
    }

    @Override
    public int blockElements() {
        return template.blocksize();
    }

    @Override
    public boolean isDoubleQuant() {
        return template.isDoubleQuant();
    }

    @Override
    public Requantizer requantizer(QuantizedWeight base) {
        if (!(base instanceof Nf4Weight)) {
            throw new IllegalArgumentException(base.weightName() + " is " + base.describe() + ", not an NF4 weight");
        }
        Nf4Weight w = (Nf4Weight) base;
        return new Nf4Requantizer(w.weightName(), w.file().path(), w.tensor().state(), quantStateBytes);
    }
}
