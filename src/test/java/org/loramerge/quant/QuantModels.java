package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;

/** Tiny model folders written from bytes with the project's SafetensorsWriter, for the quant tests. */
final class QuantModels {
    /** One tensor and its little-endian bytes. */
    record Tensor(String name, DType dtype, long[] shape, byte[] data) {
    }

    private QuantModels() {
    }

    /** Writes {@code dir/model.safetensors} (tensors in this order) and, when not null, {@code dir/config.json}. */
    static Path write(Path dir, List<Tensor> tensors, String configJson) throws IOException {
        Files.createDirectories(dir);
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (Tensor t : tensors) {
            entries.add(new SafetensorsWriter.Entry(t.name(), t.dtype(), t.shape()));
        }
        try (SafetensorsWriter w = SafetensorsWriter.create(dir.resolve("model.safetensors"), entries, Map.of("format", "pt"))) {
            for (Tensor t : tensors) {
                w.write(ByteBuffer.wrap(t.data()));
            }
            w.finish();
        }
        if (configJson != null) {
            Files.writeString(dir.resolve("config.json"), configJson);
        }
        return dir;
    }

    /** Every tensor of a file, bytes included, in header order. */
    static List<Tensor> read(SafetensorsFile f) throws IOException {
        List<Tensor> out = new ArrayList<>();
        for (TensorInfo t : f.tensors()) {
            ByteBuffer b = f.readAll(t);
            byte[] data = new byte[b.remaining()];
            b.get(data);
            out.add(new Tensor(t.name(), t.dtype(), t.shape(), data));
        }
        return out;
    }

    /** Values rounded to {@code dtype}, as little-endian bytes. */
    static byte[] encode(DType dtype, double[] values) {
        FloatFormat fmt = FloatFormat.of(dtype);
        ByteBuffer b = ByteBuffer.allocate(values.length * dtype.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < values.length; i++) {
            fmt.putBits(b, i, fmt.encode(fmt.round(values[i])));
        }
        return b.array();
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
