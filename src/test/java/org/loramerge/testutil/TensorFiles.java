package org.loramerge.testutil;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.TensorSource;

/** Writes float tensors given as doubles (rounded to their dtype) into one safetensors file. */
public final class TensorFiles {
    private final Map<String, DType> dtypes = new LinkedHashMap<>();
    private final Map<String, long[]> shapes = new LinkedHashMap<>();
    private final Map<String, double[]> values = new LinkedHashMap<>();

    public TensorFiles add(String name, DType dtype, long[] shape, double[] v) {
        dtypes.put(name, dtype);
        shapes.put(name, shape);
        values.put(name, v);
        return this;
    }

    /** Writes the file and returns it opened. */
    public SafetensorsFile write(Path path) throws IOException, SafetensorsException {
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (String n : dtypes.keySet()) {
            entries.add(new SafetensorsWriter.Entry(n, dtypes.get(n), shapes.get(n)));
        }
        try (SafetensorsWriter w = SafetensorsWriter.create(path, entries, Map.of("format", "pt"))) {
            for (String n : dtypes.keySet()) {
                FloatFormat f = FloatFormat.of(dtypes.get(n));
                double[] v = values.get(n);
                ByteBuffer b = ByteBuffer.allocate(v.length * f.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                for (int i = 0; i < v.length; i++) {
                    f.putBits(b, i, f.encode(f.round(v[i])));
                }
                w.write(b);
            }
            w.finish();
        }
        return SafetensorsFile.open(path);
    }

    public static TensorSource source(SafetensorsFile f, String name) {
        return new TensorSource(f, f.tensor(name));
    }
}
