package org.loramerge.testutil;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Random;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.TensorSource;

/**
 * Small dense models with random values, written tensor by tensor from doubles (rounded once to
 * their dtype), and read back as doubles: for tests that compare whole tensors (extract, unmerge).
 */
public final class DenseModels {
    /** Tensor name to values, in write order; shapes and dtypes beside. */
    private final Map<String, double[]> values = new LinkedHashMap<>();
    private final Map<String, long[]> shapes = new LinkedHashMap<>();
    private final Map<String, DType> dtypes = new LinkedHashMap<>();

    public DenseModels put(String name, DType dtype, long[] shape, double[] v) {
        values.put(name, v.clone());
        shapes.put(name, shape.clone());
        dtypes.put(name, dtype);
        return this;
    }

    public double[] values(String name) {
        return values.get(name);
    }

    public Map<String, double[]> all() {
        return values;
    }

    /** A copy with the same tensors. */
    public DenseModels copy() {
        DenseModels c = new DenseModels();
        for (String n : values.keySet()) {
            c.put(n, dtypes.get(n), shapes.get(n), values.get(n));
        }
        return c;
    }

    public DenseModels remove(String name) {
        values.remove(name);
        shapes.remove(name);
        dtypes.remove(name);
        return this;
    }

    /** Writes config.json and model.safetensors into {@code dir}. */
    public Path write(Path dir, String configJson) throws IOException, SafetensorsException {
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("config.json"), configJson);
        TensorFiles f = new TensorFiles();
        for (String n : values.keySet()) {
            f.add(n, dtypes.get(n), shapes.get(n), values.get(n));
        }
        f.write(dir.resolve("model.safetensors")).close();
        return dir;
    }

    /** n values ~ N(0, std²), rounded to {@code dtype}. */
    public static double[] gaussian(int n, double std, DType dtype, Random r) {
        FloatFormat f = FloatFormat.of(dtype);
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = f.round(std * r.nextGaussian());
        }
        return v;
    }

    /** Every floating-point tensor of a model folder, as exact doubles. */
    public static Map<String, double[]> read(Path dir) throws IOException, SafetensorsException {
        Map<String, double[]> out = new LinkedHashMap<>();
        try (Checkpoint c = Checkpoint.open(dir)) {
            for (TensorInfo t : c.tensors().values()) {
                out.put(t.name(), new TensorSource(c.fileOf(t.name()), t).readDoubles());
            }
        }
        return out;
    }

    /** Every floating-point tensor of one safetensors file, as exact doubles. */
    public static Map<String, double[]> readFile(Path file) throws IOException, SafetensorsException {
        Map<String, double[]> out = new LinkedHashMap<>();
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            for (TensorInfo t : f.tensors()) {
                out.put(t.name(), new TensorSource(f, t).readDoubles());
            }
        }
        return out;
    }
}
