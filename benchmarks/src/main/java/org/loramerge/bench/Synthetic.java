package org.loramerge.bench;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.plan.TermSpec;

/** Random weights and a LoRA pair in one file, as a merge job for the benchmarks (never zeros: see METHOD.md). */
public final class Synthetic {
    private Synthetic() {
    }

    /** Parses "ROWSxCOLS". */
    public static int[] shape(String s) {
        String[] p = s.split("x");
        return new int[] {Integer.parseInt(p[0]), Integer.parseInt(p[1])};
    }

    /** Writes W [rows, cols] in {@code dtype}, lora_A [r, cols] and lora_B [rows, r] in F32; returns the opened file. */
    public static SafetensorsFile write(Path file, int rows, int cols, int rank, DType dtype) throws IOException, SafetensorsException {
        List<SafetensorsWriter.Entry> entries = List.of(
                new SafetensorsWriter.Entry("w", dtype, new long[] {rows, cols}),
                new SafetensorsWriter.Entry("a", DType.F32, new long[] {rank, cols}),
                new SafetensorsWriter.Entry("b", DType.F32, new long[] {rows, rank}));
        SplittableRandom rnd = new SplittableRandom(rows * 31L + cols + rank);
        try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of("format", "pt"))) {
            FloatFormat f = FloatFormat.of(dtype);
            writeRandom(w, (long) rows * cols, f, 0.02, rnd);
            writeRandom(w, (long) rank * cols, FloatFormat.F32, 0.05, rnd);
            writeRandom(w, (long) rows * rank, FloatFormat.F32, 0.02, rnd);
            w.finish();
        }
        return SafetensorsFile.open(file);
    }

    /**
     * Writes W [rows, cols] in {@code dtype} and {@code adapters} LoRA pairs a0, b0, a1, b1, ...
     * (lora_A [r, cols], lora_B [rows, r], F32), random, never zero; returns the opened file.
     */
    public static SafetensorsFile writeAdapters(Path file, int rows, int cols, int rank, int adapters, DType dtype)
            throws IOException, SafetensorsException {
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        entries.add(new SafetensorsWriter.Entry("w", dtype, new long[] {rows, cols}));
        for (int i = 0; i < adapters; i++) {
            entries.add(new SafetensorsWriter.Entry("a" + i, DType.F32, new long[] {rank, cols}));
            entries.add(new SafetensorsWriter.Entry("b" + i, DType.F32, new long[] {rows, rank}));
        }
        SplittableRandom rnd = new SplittableRandom(rows * 37L + cols + rank + adapters);
        try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of("format", "pt"))) {
            writeRandom(w, (long) rows * cols, FloatFormat.of(dtype), 0.02, rnd);
            for (int i = 0; i < adapters; i++) {
                writeRandom(w, (long) rank * cols, FloatFormat.F32, 0.05, rnd);
                writeRandom(w, (long) rows * rank, FloatFormat.F32, 0.02, rnd);
            }
            w.finish();
        }
        return SafetensorsFile.open(file);
    }

    private static void writeRandom(SafetensorsWriter w, long n, FloatFormat f, double std, SplittableRandom rnd) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(1 << 20).order(ByteOrder.LITTLE_ENDIAN);
        int per = f.sizeInBytes();
        for (long i = 0; i < n; i++) {
            double v = std * (rnd.nextDouble() + rnd.nextDouble() + rnd.nextDouble() - 1.5) * 2;
            if (per == 4) {
                b.putInt(f.encode(f.round(v)));
            } else {
                b.putShort((short) f.encode(f.round(v)));
            }
            if (!b.hasRemaining()) {
                b.flip();
                w.write(b);
                b.clear();
            }
        }
        b.flip();
        w.write(b);
    }

    /**
     * A Llama-like model folder ({@code dir/base}: {@code layers} up_proj weights [rows, cols] in BF16)
     * and a rank-{@code rank} PEFT adapter for it ({@code dir/adapter}), random, never zero.
     */
    public static void writeModel(Path dir, int layers, int rows, int cols, int rank) throws IOException {
        Path base = java.nio.file.Files.createDirectories(dir.resolve("base"));
        Path adapter = java.nio.file.Files.createDirectories(dir.resolve("adapter"));
        SplittableRandom rnd = new SplittableRandom(layers * 31L + rows + cols + rank);
        List<SafetensorsWriter.Entry> weights = new java.util.ArrayList<>();
        List<SafetensorsWriter.Entry> factors = new java.util.ArrayList<>();
        for (int i = 0; i < layers; i++) {
            String m = "model.layers." + i + ".mlp.up_proj";
            weights.add(new SafetensorsWriter.Entry(m + ".weight", DType.BF16, new long[] {rows, cols}));
            factors.add(new SafetensorsWriter.Entry("base_model.model." + m + ".lora_A.weight", DType.F32, new long[] {rank, cols}));
            factors.add(new SafetensorsWriter.Entry("base_model.model." + m + ".lora_B.weight", DType.F32, new long[] {rows, rank}));
        }
        try (SafetensorsWriter w = SafetensorsWriter.create(base.resolve("model.safetensors"), weights, Map.of("format", "pt"))) {
            for (int i = 0; i < layers; i++) {
                writeRandom(w, (long) rows * cols, FloatFormat.BF16, 0.02, rnd);
            }
            w.finish();
        }
        try (SafetensorsWriter w = SafetensorsWriter.create(adapter.resolve("adapter_model.safetensors"), factors, Map.of("format", "pt"))) {
            for (int i = 0; i < layers; i++) {
                writeRandom(w, (long) rank * cols, FloatFormat.F32, 0.05, rnd);
                writeRandom(w, (long) rows * rank, FloatFormat.F32, 0.02, rnd);
            }
            w.finish();
        }
        java.nio.file.Files.writeString(base.resolve("config.json"),
                "{\"model_type\":\"llama\",\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\"}");
        java.nio.file.Files.writeString(adapter.resolve("adapter_config.json"),
                "{\"peft_type\":\"LORA\",\"r\":" + rank + ",\"lora_alpha\":" + 2 * rank + ",\"target_modules\":[\"up_proj\"]}");
    }

    /** Deletes a folder tree, if it exists. */
    public static void delete(Path p) throws IOException {
        if (java.nio.file.Files.exists(p)) {
            try (java.util.stream.Stream<Path> s = java.nio.file.Files.walk(p)) {
                s.sorted(java.util.Comparator.reverseOrder()).forEach(x -> x.toFile().delete());
            }
        }
    }

    /** The merge of W with its LoRA pair, s = 16 / r. */
    public static OutputTensor job(SafetensorsFile f, int rank) {
        TensorSource w = new TensorSource(f, f.tensor("w"));
        TermSpec term = new TermSpec("w", Layout.LINEAR, new TensorSource(f, f.tensor("a")), new TensorSource(f, f.tensor("b")), rank, 16.0 / rank);
        return OutputTensor.merge("w", w.dtype(), w, new OutputTensor.Update(List.of(term), null, null));
    }
}
