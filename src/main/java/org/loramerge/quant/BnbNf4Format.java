package org.loramerge.quant;

import java.io.IOException;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.loramerge.format.Checkpoint;

/**
 * bitsandbytes 4-bit weights, NF4 or FP4, as transformers saves a model loaded with
 * {@code load_in_4bit} (found by {@link Nf4Detector}; 8-bit weights are {@code BnbInt8Format}'s).
 */
public final class BnbNf4Format implements WeightFormat {
    public static final BnbNf4Format INSTANCE = new BnbNf4Format();

    private BnbNf4Format() {
    }

    @Override
    public String name() {
        return "bitsandbytes 4-bit NF4";
    }

    /** "bitsandbytes 4-bit NF4", "... FP4", or "... FP4 and NF4" for a model that mixes them: the quant types its weights use. */
    @Override
    public String name(QuantizedModel model) {
        Set<String> types = new TreeSet<>();
        for (QuantizedWeight w : model.weights().values()) {
            types.add(w.kind().toUpperCase(Locale.ROOT));
        }
        return types.isEmpty() ? name() : "bitsandbytes 4-bit " + String.join(" and ", types);
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
