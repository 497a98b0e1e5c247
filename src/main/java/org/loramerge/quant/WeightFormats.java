package org.loramerge.quant;

import java.io.IOException;
import java.util.List;
import org.loramerge.format.Checkpoint;

/** The weight formats loramerge reads, and the one a checkpoint uses. */
public final class WeightFormats {
    /** Every format, in the order they are tried. */
    public static final List<WeightFormat> ALL = List.of(BnbNf4Format.INSTANCE);

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
        return QuantizedModel.none();
    }
}
