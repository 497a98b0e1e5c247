package org.loramerge.quant;

import java.util.Arrays;
import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;

/**
 * A weight written as a bitsandbytes NF4 tensor group ({@code merge --to nf4}): the merged values,
 * rounded once to the quant state's dtype, requantized with the base weight's blocksize and
 * double-quantization setting ({@link Nf4Requantizer}). The quant state is bitsandbytes' exact JSON;
 * with double quantization it holds the mean absmax of the merged weight, known only after its
 * last block, and is written as a late tensor ({@link Nf4Tensor#layout}).
 *
 * @param template the output quant state with a placeholder offset (its blocksize, dtype, shape, nesting)
 * @param warnings settings of the base the output cannot keep
 */
public record Nf4Output(QuantState template, List<String> warnings) implements QuantizedOutput {
    public Nf4Output {
        warnings = List.copyOf(warnings);
    }

    /**
     * The output of a weight requantized with {@code base}'s settings. Double quantization is
     * written with bitsandbytes' nested blocksize of 256 whatever the base's.
     */
    public static Nf4Output requantizing(QuantState base) {
        QuantState.Nested nested = base.isDoubleQuant() ? new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, 0f) : null;
        QuantState template = base.withNested(nested);
        List<String> warnings = base.isDoubleQuant() && base.nested().blocksize() != DoubleQuant.NESTED_BLOCKSIZE
                ? List.of("has nested blocks of " + base.nested().blocksize() + "; its requantized absmax uses " + DoubleQuant.NESTED_BLOCKSIZE
                        + ", as bitsandbytes always does")
                : List.of();
        return new Nf4Output(template, warnings);
    }

    /**
     * The NF4 output of a weight of another format (GPTQ, AWQ) quantized to NF4: {@code blocksize},
     * double quantization or not, and the weight's dtype as the quant state's compute dtype.
     */
    public static Nf4Output forDense(DType dtype, long[] shape, int blocksize, boolean doubleQuant) {
        QuantState.Nested nested = doubleQuant ? new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, 0f) : null;
        return new Nf4Output(QuantState.of(blocksize, dtype, shape, nested), List.of());
    }

    @Override
    public List<SafetensorsWriter.Entry> entries(String weightName) {
        return Nf4Tensor.layout(weightName, template);
    }

    @Override
    public String kind() {
        return template.code().name();
    }

    @Override
    public int blockElements() {
        return template.blocksize();
    }

    @Override
    public boolean isDoubleQuant() {
        return template.isDoubleQuant();
    }

    /** A requantizer of {@code base}'s merged values (in its dtype, which must be the template's) into this output. */
    @Override
    public Requantizer requantizer(QuantizedWeight base) {
        if (base.dtype() != template.dtype() || !Arrays.equals(base.shape(), template.shape())) {
            throw new IllegalArgumentException(base.weightName() + " is " + base.dtype() + " " + Arrays.toString(base.shape())
                    + ", not what " + template + " describes");
        }
        return new Nf4Requantizer(base.weightName(), base.file().path(), template);
    }
}
