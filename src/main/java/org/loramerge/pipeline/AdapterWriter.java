package org.loramerge.pipeline;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.DType;
import org.loramerge.format.Json;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.TensorSource;

/**
 * Writes a PEFT adapter folder into an {@link AtomicOutput}: {@code adapter_config.json} and
 * {@code adapter_model.safetensors} (tensors in name order, {@code {"format":"pt"}} as PEFT's
 * save_pretrained writes it), then commits, so the folder appears complete or not at all.
 */
public final class AdapterWriter {
    /** Bytes copied from a source tensor at a time. */
    private static final long COPY_WINDOW = 64L << 20;

    /** One tensor of the adapter file and where its bytes come from. */
    public record Tensor(String name, DType dtype, long[] shape, Content content) {
    }

    /** The bytes of one tensor, in its dtype, written in order. */
    public interface Content {
        void writeTo(SafetensorsWriter out) throws IOException;
    }

    private AdapterWriter() {
    }

    /** Bytes held in memory (little-endian, from position 0 to the limit). */
    public static Content bytes(ByteBuffer b) {
        return out -> out.write(b.duplicate());
    }

    /** A tensor of a checkpoint, copied as it is stored, window by window. */
    public static Content copyOf(TensorSource source) {
        return out -> {
            long size = source.info().sizeInBytes();
            for (long off = 0; off < size; off += COPY_WINDOW) {
                try (TensorSource.Bytes b = source.read(off, Math.min(COPY_WINDOW, size - off))) {
                    out.write(b.bytes());
                }
            }
        };
    }

    /** Writes the adapter folder and makes it appear under its final name. */
    public static void write(AtomicOutput out, ObjectNode config, List<Tensor> tensors) throws IOException {
        Files.write(out.dir().resolve(LoraAdapter.CONFIG), Json.python(config).getBytes(StandardCharsets.UTF_8)); // as PEFT's save_pretrained writes it
        List<Tensor> sorted = new ArrayList<>(tensors);
        sorted.sort(Comparator.comparing(Tensor::name));
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (Tensor t : sorted) {
            entries.add(new SafetensorsWriter.Entry(t.name(), t.dtype(), t.shape()));
        }
        try (SafetensorsWriter w = SafetensorsWriter.create(out.dir().resolve(LoraAdapter.WEIGHTS), entries, Map.of("format", "pt"))) {
            for (Tensor t : sorted) {
                long before = w.position();
                t.content().writeTo(w);
                long expected = new SafetensorsWriter.Entry(t.name(), t.dtype(), t.shape()).sizeInBytes();
                if (w.position() - before != expected) {
                    throw new IllegalStateException(t.name() + ": " + (w.position() - before) + " bytes written for " + expected + " declared");
                }
            }
            w.finish();
        }
        out.commit();
    }
}
