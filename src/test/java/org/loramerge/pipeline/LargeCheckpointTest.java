package org.loramerge.pipeline;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.RoundingCases;
import org.loramerge.verify.Verifier;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Memory does not grow with model size: a 3.2 GB checkpoint, whose 2.7 GB embedding (one tensor
 * over 2 GiB) gets a LoRA delta, is merged by a child JVM limited to a 256 MB heap. The base's
 * layout is a sparse file; the merged tensors hold real data. The child's peak RSS is printed.
 */
class LargeCheckpointTest {
    static final long VOCAB = 327_680;
    static final long DIM = 4096;
    static final long FILLER = 400_000_000L; // bytes of an unchanged U8 tensor
    static final int RANK = 4;

    @TempDir
    Path dir;

    @Test
    void mergesThreeGigabytesUnder256MbHeap() throws Exception {
        Path base = dir.resolve("base");
        Path adapter = dir.resolve("adapter");
        Files.createDirectories(base);
        Files.createDirectories(adapter);
        writeBase(base.resolve("model.safetensors"));
        Files.writeString(base.resolve("config.json"), "{\"model_type\":\"llama\",\"vocab_size\":" + VOCAB + ",\"tie_word_embeddings\":false}");
        writeAdapter(adapter);
        long baseBytes = Files.size(base.resolve("model.safetensors"));
        assertTrue(baseBytes > 3_000_000_000L, "the base is at least 3 GB: " + baseBytes);

        Path out = dir.resolve("merged");
        String java = Paths.get(System.getProperty("java.home"), "bin", "java").toString();
        List<String> cmd = new ArrayList<>(List.of(java, "-Xmx256m", "-cp", System.getProperty("java.class.path"),
                "org.loramerge.cli.Main", "merge", "--base", base.toString(), "--adapter", adapter.toString(),
                "--out", out.toString(), "--device", "cpu", "--quiet"));
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(dir.resolve("child.log").toFile()).start();
        long peakKb = 0;
        while (!p.waitFor(50, TimeUnit.MILLISECONDS)) {
            peakKb = Math.max(peakKb, vmHwmKb(p.pid()));
        }
        String log = Files.readString(dir.resolve("child.log"));
        assertEquals(0, p.exitValue(), "merge under -Xmx256m failed:\n" + log);
        System.out.printf("LargeCheckpointTest: %.2f GB merged under -Xmx256m, child peak RSS %d MB%n", baseBytes / 1e9, peakKb / 1024);
        assertTrue(peakKb < 1024 * 1024, "peak RSS " + peakKb / 1024 + " MB should stay far below the model's size");

        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter); Checkpoint m = Checkpoint.open(out)) {
            MergePlan plan = Planner.plan(b, a, PlanOptions.defaults());
            Verifier.Result r = Verifier.verify(plan, m, 8, 0);
            assertTrue(r.passed(), "verify: " + r.problems());
            assertEquals(0.0, r.worstUlp());
        }
        // beside the project's Verifier, sampled rows against this test's own exact arithmetic
        try (SafetensorsFile b = SafetensorsFile.open(base.resolve("model.safetensors"));
             SafetensorsFile a = SafetensorsFile.open(adapter.resolve("adapter_model.safetensors"));
             SafetensorsFile m = SafetensorsFile.open(out.resolve("model.safetensors"))) {
            String q = "model.layers.0.self_attn.q_proj.weight";
            String e = "model.embed_tokens.weight";
            String prefix = "base_model.model.model.";
            // q_proj: ΔW = s·B·A with A [r, 1024], B [1024, r]
            float[] qa = floats(a, prefix + "layers.0.self_attn.q_proj.lora_A.weight", 0, RANK * 1024);
            float[] qb = floats(a, prefix + "layers.0.self_attn.q_proj.lora_B.weight", 0, 1024 * RANK);
            for (long row : new long[] {0, 1, 511, 1023}) {
                assertRowIsExact(b, m, q, row, 1024, (i, j) -> dot(qb, (int) i * RANK, 1, qa, j, 1024));
            }
            // embedding: ΔW = s·(B·A)ᵀ with A [r, vocab], B [dim, r]; the last four rows hold data, past 2 GiB into the tensor
            float[] eb = floats(a, prefix + "embed_tokens.lora_embedding_B", 0, (int) DIM * RANK);
            for (long row : new long[] {0, VOCAB / 2, VOCAB - 5, VOCAB - 4, VOCAB - 2, VOCAB - 1}) {
                float[] ea = new float[RANK];
                for (int k = 0; k < RANK; k++) {
                    ea[k] = floats(a, prefix + "embed_tokens.lora_embedding_A", (long) k * VOCAB + row, 1)[0];
                }
                assertRowIsExact(b, m, e, row, (int) DIM, (i, j) -> dot(eb, j * RANK, 1, ea, 0, 1));
            }
        }
    }

    /** ΔW[i, j] before the scale, exactly: Σ_k x[xOff + k·xStep]·y[yOff + k·yStep]. */
    private interface Delta {
        RoundingCases.Dyadic at(long row, int col);
    }

    private static RoundingCases.Dyadic dot(float[] x, int xOff, int xStep, float[] y, int yOff, int yStep) {
        RoundingCases.Dyadic sum = RoundingCases.Dyadic.ZERO;
        for (int k = 0; k < RANK; k++) {
            sum = sum.add(RoundingCases.Dyadic.ofDouble(x[xOff + k * xStep]).multiply(RoundingCases.Dyadic.ofDouble(y[yOff + k * yStep])));
        }
        return sum;
    }

    /** Row {@code row} of the merged BF16 tensor equals W + 2·ΔW (alpha 8, r 4) rounded once, element by element. */
    private static void assertRowIsExact(SafetensorsFile base, SafetensorsFile merged, String name, long row, int cols, Delta delta) throws IOException {
        RoundingCases.Dyadic scale = RoundingCases.Dyadic.ofDouble(8.0 / RANK);
        try (MappedRegion w = base.map(base.tensor(name), row * cols * 2, cols * 2L);
             MappedRegion got = merged.map(merged.tensor(name), row * cols * 2, cols * 2L)) {
            for (int j = 0; j < cols; j++) {
                int wBits = w.bytes().getShort(2 * j) & 0xFFFF;
                RoundingCases.Dyadic exact = RoundingCases.value(wBits, RoundingCases.Fmt.BF16).add(scale.multiply(delta.at(row, j)));
                int want = RoundingCases.roundBits(exact, RoundingCases.Fmt.BF16);
                int have = got.bytes().getShort(2 * j) & 0xFFFF;
                if (want != have) {
                    fail(name + "[" + row + ", " + j + "] is 0x" + Integer.toHexString(have) + ", not the exact merge rounded once, 0x"
                            + Integer.toHexString(want));
                }
            }
        }
    }

    private static float[] floats(SafetensorsFile f, String name, long first, int count) throws IOException {
        float[] out = new float[count];
        try (MappedRegion r = f.map(f.tensor(name), first * 4, count * 4L)) {
            r.bytes().asFloatBuffer().get(out);
        }
        return out;
    }

    private static long vmHwmKb(long pid) {
        try {
            for (String line : Files.readAllLines(Paths.get("/proc/" + pid + "/status"))) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", ""));
                }
            }
        } catch (IOException | RuntimeException e) {
            // the process ended between the poll and the read
        }
        return 0;
    }

    /** A real 1024x1024 BF16 projection, then the sparse embedding and filler. */
    private static void writeBase(Path file) throws IOException {
        List<SafetensorsWriter.Entry> entries = List.of(
                new SafetensorsWriter.Entry("model.layers.0.self_attn.q_proj.weight", DType.BF16, new long[] {1024, 1024}),
                new SafetensorsWriter.Entry("model.embed_tokens.weight", DType.BF16, new long[] {VOCAB, DIM}),
                new SafetensorsWriter.Entry("model.filler", DType.U8, new long[] {FILLER}));
        byte[] header = SafetensorsWriter.header(entries, Map.of("format", "pt"));
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "rw")) {
            f.write(header);
            SplittableRandom rnd = new SplittableRandom(1);
            ByteBuffer q = ByteBuffer.allocate(1024 * 1024 * 2).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < 1024 * 1024; i++) {
                q.putShort((short) (Float.floatToRawIntBits((float) (rnd.nextDouble() - 0.5) * 0.04f) >>> 16));
            }
            f.write(q.array());
            long total = header.length;
            for (SafetensorsWriter.Entry e : entries) {
                total += e.sizeInBytes();
            }
            f.setLength(total); // the embedding and filler stay holes: zeros
            // a few real rows at the end of the embedding, beyond 2 GiB into the tensor
            f.seek(total - FILLER - 4 * DIM * 2);
            byte[] tail = new byte[(int) (4 * DIM * 2)];
            for (int i = 0; i < tail.length; i += 2) {
                tail[i + 1] = 0x3F; // bf16 0x3Fxx: around 0.5..1.0
                tail[i] = (byte) i;
            }
            f.write(tail);
        }
    }

    private static void writeAdapter(Path dir) throws IOException {
        Files.writeString(dir.resolve("adapter_config.json"), "{\"peft_type\":\"LORA\",\"r\":" + RANK + ",\"lora_alpha\":8,"
                + "\"target_modules\":[\"q_proj\",\"embed_tokens\"]}");
        SplittableRandom rnd = new SplittableRandom(2);
        List<SafetensorsWriter.Entry> entries = List.of(
                new SafetensorsWriter.Entry("base_model.model.model.embed_tokens.lora_embedding_A", DType.F32, new long[] {RANK, VOCAB}),
                new SafetensorsWriter.Entry("base_model.model.model.embed_tokens.lora_embedding_B", DType.F32, new long[] {DIM, RANK}),
                new SafetensorsWriter.Entry("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType.F32, new long[] {RANK, 1024}),
                new SafetensorsWriter.Entry("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", DType.F32, new long[] {1024, RANK}));
        try (SafetensorsWriter w = SafetensorsWriter.create(dir.resolve("adapter_model.safetensors"), entries, Map.of("format", "pt"))) {
            for (SafetensorsWriter.Entry e : entries) {
                ByteBuffer b = ByteBuffer.allocate((int) e.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
                while (b.hasRemaining()) {
                    b.putFloat((float) ((rnd.nextDouble() - 0.5) * 0.1));
                }
                b.flip();
                w.write(b);
            }
            w.finish();
        }
    }
}
