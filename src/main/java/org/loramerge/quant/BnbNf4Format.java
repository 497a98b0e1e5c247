package org.loramerge.quant;

import java.io.IOException;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Map;
import org.loramerge.format.Checkpoint;

/**
 * bitsandbytes 4-bit NF4 weights, as transformers saves a model loaded with
 * {@code load_in_4bit} (found by {@link Nf4Detector}; FP4 and 8-bit variants are refused there).
 */
public final class BnbNf4Format implements WeightFormat {
    public static final BnbNf4Format INSTANCE = new BnbNf4Format();

    private BnbNf4Format() {
    }

    @Override
    public String name() {
        return "bitsandbytes 4-bit NF4";
    }

    @Override
    public QuantizedModel detect(Checkpoint checkpoint) throws QuantException, IOException {
        Nf4Detector.Result r = Nf4Detector.detectIfBitsandbytes(checkpoint);
        if (r == Nf4Detector.NONE) {
            return QuantizedModel.none();
        }
        Map<String, QuantizedWeight> weights = new LinkedHashMap<>();
        for (Nf4Tensor t : r.weights().values()) {
            weights.put(t.weightName(), new Nf4Weight(t));
        }
        return new QuantizedModel(this, Bnb4BitConfig.KEY, Collections.unmodifiableMap(weights), r.groupTensorNames(), r.warnings());
    }
}
