package org.loramerge.quant;

import java.util.ArrayList;
import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;

/**
 * An FP8 weight requantized with its own scheme ({@code merge --to fp8}, transformers' fine-grained
 * layout): the e4m3 codes, the scale tensor of the base's name and grid with new scales
 * ({@link Fp8Requantizer}), and the group's activation scales as they were.
 *
 * @param base the base weight, whose layout the output keeps
 */
public record Fp8Output(Fp8Weight base) implements QuantizedOutput {
    @Override
    public List<SafetensorsWriter.Entry> entries(String weightName) {
        List<SafetensorsWriter.Entry> out = new ArrayList<>();
        out.add(new SafetensorsWriter.Entry(weightName, DType.F8_E4M3, base.shape()));
        out.add(new SafetensorsWriter.Entry(base.scale().info().name(), DType.F32, base.scale().info().shape()));
        for (Fp8Weight.Part p : base.extras()) {
            out.add(new SafetensorsWriter.Entry(p.info().name(), p.info().dtype(), p.info().shape()));
        }
        return out;
    }

    @Override
    public String kind() {
        return "FP8";
    }

    @Override
    public int blockElements() {
        long rows = base.scheme() == Fp8Weight.Scheme.TENSOR ? base.rows() : base.blockRows();
        return Math.toIntExact(rows * base.cols());
    }

    @Override
    public Requantizer requantizer(QuantizedWeight w) {
        if (w != base) {
            throw new IllegalArgumentException(w.weightName() + " is not the weight this output was made for");
        }
        return new Fp8Requantizer(base);
    }
}
