package org.loramerge.testutil;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.ShardIndex;

/**
 * Builders for tiny safetensors files, model folders and PEFT adapter folders, written from bytes
 * in the test itself: either through the project's {@link SafetensorsWriter} (for well-formed
 * files) or as raw bytes (header length, header JSON, data) for the malformed ones.
 */
public final class TinyModels {
    /** The key prefix PEFT's save_pretrained writes. */
    public static final String PEFT_PREFIX = "base_model.model.";

    /** A config.json that names a llama-style architecture (nn.Linear layers). */
    public static final String LLAMA_CONFIG = "{\"model_type\": \"llama\", \"torch_dtype\": \"bfloat16\", \"tie_word_embeddings\": false}\n";

    private TinyModels() {
    }

    /** One tensor with its little-endian bytes. */
    public record Tensor(String name, DType dtype, long[] shape, byte[] data) {
        public Tensor {
            long bits = dtype.bits();
            for (long d : shape) {
                bits *= d;
            }
            if (bits != 8L * data.length) {
                throw new IllegalArgumentException(name + ": " + data.length + " bytes do not fit " + dtype + java.util.Arrays.toString(shape));
            }
        }

        public SafetensorsWriter.Entry entry() {
            return new SafetensorsWriter.Entry(name, dtype, shape);
        }
    }

    // ---------------------------------------------------------------- raw bytes

    /** {@code u64 LE N | header | data}: a safetensors file from a header given verbatim. */
    public static byte[] rawFile(String header, byte[] data) {
        return rawFile(header.getBytes(StandardCharsets.UTF_8), data);
    }

    /** {@code u64 LE N | header | data}, with N the header's length. */
    public static byte[] rawFile(byte[] header, byte[] data) {
        return concat(le64(header.length), header, data);
    }

    public static Path writeRaw(Path file, String header, byte[] data) {
        return writeBytes(file, rawFile(header, data));
    }

    public static Path writeBytes(Path file, byte[] bytes) {
        try {
            Files.createDirectories(file.getParent());
            return Files.write(file, bytes);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static byte[] le64(long v) {
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(v).array();
    }

    public static byte[] concat(byte[]... parts) {
        int n = 0;
        for (byte[] p : parts) {
            n += p.length;
        }
        byte[] out = new byte[n];
        int pos = 0;
        for (byte[] p : parts) {
            System.arraycopy(p, 0, out, pos, p.length);
            pos += p.length;
        }
        return out;
    }

    /** {@code count} bytes with a recognisable pattern (never all zero). */
    public static byte[] pattern(int count, int seed) {
        byte[] b = new byte[count];
        for (int i = 0; i < count; i++) {
            b[i] = (byte) (seed * 31 + i * 7 + 1);
        }
        return b;
    }

    // ---------------------------------------------------------------- values

    /** BF16 bytes of {@code values} (each must be exactly representable in BF16). */
    public static byte[] bf16(double... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (double v : values) {
            int bits = Float.floatToRawIntBits((float) v);
            if ((bits & 0xFFFF) != 0) {
                throw new IllegalArgumentException(v + " is not a BF16 value");
            }
            b.putShort((short) (bits >>> 16));
        }
        return b.array();
    }

    public static byte[] f16(double... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (double v : values) {
            b.putShort((short) org.loramerge.format.FloatFormat.F16.encode(v));
        }
        return b.array();
    }

    public static byte[] f32(double... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (double v : values) {
            b.putFloat((float) v);
        }
        return b.array();
    }

    /** {@code n} small values exact in BF16: multiples of 1/16 in [-0.5, 0.5]. */
    public static double[] values(int n, int seed) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = (((i * 5 + seed * 3) % 17) - 8) / 16.0;
        }
        return v;
    }

    public static Tensor bf16Tensor(String name, long... shape) {
        return new Tensor(name, DType.BF16, shape, bf16(values(count(shape), name.hashCode() & 0xFF)));
    }

    public static Tensor f32Tensor(String name, long... shape) {
        return new Tensor(name, DType.F32, shape, f32(values(count(shape), name.hashCode() & 0xFF)));
    }

    private static int count(long[] shape) {
        long n = 1;
        for (long d : shape) {
            n *= d;
        }
        return Math.toIntExact(n);
    }

    // ---------------------------------------------------------------- files

    /** Writes one safetensors file with the project's writer and {@code {"format":"pt"}} metadata. */
    public static Path writeSafetensors(Path file, List<Tensor> tensors) {
        return writeSafetensors(file, tensors, Map.of("format", "pt"));
    }

    public static Path writeSafetensors(Path file, List<Tensor> tensors, Map<String, String> metadata) {
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (Tensor t : tensors) {
            entries.add(t.entry());
        }
        try {
            Files.createDirectories(file.getParent());
            try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, metadata)) {
                for (Tensor t : tensors) {
                    w.write(ByteBuffer.wrap(t.data()));
                }
                w.finish();
            }
            return file;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static Path writeText(Path file, String text) {
        return writeBytes(file, text.getBytes(StandardCharsets.UTF_8));
    }

    // ---------------------------------------------------------------- models

    public static String q(int layer) {
        return "model.layers." + layer + ".self_attn.q_proj";
    }

    public static String k(int layer) {
        return "model.layers." + layer + ".self_attn.k_proj";
    }

    /**
     * A 2-layer llama-like model: per layer q_proj and k_proj [8, 8] BF16 and an input_layernorm [8],
     * then model.norm [8].
     */
    public static List<Tensor> tinyLlama() {
        List<Tensor> t = new ArrayList<>();
        for (int layer = 0; layer < 2; layer++) {
            t.add(bf16Tensor(q(layer) + ".weight", 8, 8));
            t.add(bf16Tensor(k(layer) + ".weight", 8, 8));
            t.add(bf16Tensor("model.layers." + layer + ".input_layernorm.weight", 8));
        }
        t.add(bf16Tensor("model.norm.weight", 8));
        return t;
    }

    /** A model folder: config.json and one model.safetensors. */
    public static Path writeModel(Path dir, List<Tensor> tensors) {
        writeText(dir.resolve("config.json"), LLAMA_CONFIG);
        writeSafetensors(dir.resolve("model.safetensors"), tensors);
        return dir;
    }

    /** The tiny llama as one model.safetensors. */
    public static Path writeTinyLlama(Path dir) {
        return writeModel(dir, tinyLlama());
    }

    /**
     * A sharded model folder: config.json, {@code model-0000i-of-0000n.safetensors} and the index,
     * written as transformers writes it (weight_map sorted by tensor name).
     */
    public static Path writeShardedModel(Path dir, List<List<Tensor>> shards) {
        writeText(dir.resolve("config.json"), LLAMA_CONFIG);
        Map<String, String> weightMap = new LinkedHashMap<>();
        long total = 0;
        for (int i = 0; i < shards.size(); i++) {
            String name = shardName(i, shards.size());
            writeSafetensors(dir.resolve(name), shards.get(i));
            for (Tensor t : shards.get(i)) {
                weightMap.put(t.name(), name);
                total += t.data().length;
            }
        }
        writeBytes(dir.resolve(ShardIndex.FILE_NAME), ShardIndex.toJson(weightMap, total));
        return dir;
    }

    public static String shardName(int index, int count) {
        return String.format("model-%05d-of-%05d.safetensors", index + 1, count);
    }

    /** An index file with the given weight_map (insertion order kept) and total_size. */
    public static Path writeIndex(Path dir, Map<String, String> weightMap, long totalSize) {
        StringBuilder sb = new StringBuilder("{\"metadata\": {\"total_size\": ").append(totalSize).append("}, \"weight_map\": {");
        boolean first = true;
        for (Map.Entry<String, String> e : weightMap.entrySet()) {
            sb.append(first ? "" : ", ").append(jsonString(e.getKey())).append(": ").append(jsonString(e.getValue()));
            first = false;
        }
        sb.append("}}\n");
        return writeText(dir.resolve(ShardIndex.FILE_NAME), sb.toString());
    }

    public static String jsonString(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                default:
                    if (c < 0x20) {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('"').toString();
    }

    // ---------------------------------------------------------------- adapters

    /** lora_A [r, in] and lora_B [out, r] in F32 for {@code module}, keyed as PEFT saves them. */
    public static List<Tensor> loraPair(String module, int r, int in, int out) {
        return List.of(
                f32Tensor(PEFT_PREFIX + module + ".lora_A.weight", r, in),
                f32Tensor(PEFT_PREFIX + module + ".lora_B.weight", out, r));
    }

    /** The LoRA pairs of rank r for the q_proj of both layers of {@link #tinyLlama()}. */
    public static List<Tensor> qProjAdapter(int r) {
        List<Tensor> t = new ArrayList<>();
        t.addAll(loraPair(q(0), r, 8, 8));
        t.addAll(loraPair(q(1), r, 8, 8));
        return t;
    }

    /** The adapter of {@link #qProjAdapter}(2), alpha 4, on both q_proj of {@link #tinyLlama}, written into {@code dir}. */
    public static Path writeQProjAdapter(Path dir) {
        return writeAdapter(dir, loraConfig(2, 4, "[\"q_proj\"]", ""), qProjAdapter(2));
    }

    /** A minimal LoRA adapter_config.json; {@code extra} is spliced in as further fields (may be empty). */
    public static String loraConfig(int r, double alpha, String targetModulesJson, String extra) {
        return "{\"peft_type\": \"LORA\", \"r\": " + r + ", \"lora_alpha\": " + alpha + ", \"target_modules\": " + targetModulesJson
                + ", \"base_model_name_or_path\": \"tiny-llama\", \"bias\": \"none\", \"fan_in_fan_out\": false"
                + (extra == null || extra.isEmpty() ? "" : ", " + extra) + "}\n";
    }

    /** An adapter folder: adapter_config.json and adapter_model.safetensors. */
    public static Path writeAdapter(Path dir, String configJson, List<Tensor> tensors) {
        writeText(dir.resolve("adapter_config.json"), configJson);
        writeSafetensors(dir.resolve("adapter_model.safetensors"), tensors);
        return dir;
    }

    // ---------------------------------------------------------------- the Hugging Face cache

    /**
     * Moves the files of {@code modelDir} into a Hugging Face cache repository under {@code hub}, laid
     * out as the hub library lays it out: {@code models--ORG--NAME/blobs/<sha256>} holds the bytes and
     * {@code models--ORG--NAME/snapshots/<rev>/<file>} is a relative link {@code ../../blobs/<sha256>}.
     *
     * @return the snapshot folder, which a user passes as the model folder
     */
    public static Path asHuggingFaceCache(Path modelDir, Path hub, String orgAndName) {
        Path repo = hub.resolve("models--" + orgAndName.replace("/", "--"));
        Path blobs = repo.resolve("blobs");
        Path snapshot = repo.resolve("snapshots").resolve("0123456789abcdef0123456789abcdef01234567");
        try {
            Files.createDirectories(blobs);
            Files.createDirectories(snapshot);
            for (String name : list(modelDir)) {
                Path file = modelDir.resolve(name);
                String hash = sha256(Files.readAllBytes(file));
                Files.move(file, blobs.resolve(hash), StandardCopyOption.REPLACE_EXISTING);
                Files.createSymbolicLink(snapshot.resolve(name), Path.of("..", "..", "blobs", hash));
            }
            Files.delete(modelDir);
            writeText(repo.resolve("refs").resolve("main"), snapshot.getFileName().toString());
            return snapshot;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    // ---------------------------------------------------------------- special files

    /** Whether this machine has {@code mkfifo} (tests that need named pipes skip themselves without it). */
    public static boolean hasMkfifo() {
        try {
            return new ProcessBuilder("mkfifo", "--version").redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD)
                    .start().waitFor() == 0;
        } catch (IOException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    /** Replaces {@code file} (if it exists) by a named pipe that nobody writes to: opening it for reading would block forever. */
    public static Path replaceWithFifo(Path file) {
        try {
            Files.deleteIfExists(file);
            Process p = new ProcessBuilder("mkfifo", file.toString()).redirectErrorStream(true).start();
            String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            if (p.waitFor() != 0 || !Files.exists(file)) {
                throw new IOException("mkfifo " + file + " failed: " + output);
            }
            return file;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        }
    }

    /** Replaces {@code file} (if it exists) by a symbolic link to {@code target}. */
    public static Path replaceWithLink(Path file, Path target) {
        try {
            Files.deleteIfExists(file);
            return Files.createSymbolicLink(file, target);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A sparse file of {@code size} bytes (spaces at both ends, holes between): large on paper, nothing on disk. */
    public static Path writeSparse(Path file, long size) {
        try (RandomAccessFile raf = new RandomAccessFile(file.toFile(), "rw")) {
            raf.setLength(size);
            raf.write(' ');
            raf.seek(size - 1);
            raf.write(' ');
            return file;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    // ---------------------------------------------------------------- folder snapshots

    /** SHA-256 of every file under {@code dir}, by relative path: equal maps mean identical trees. */
    public static Map<String, String> hashTree(Path dir) {
        Map<String, String> out = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) walk::iterator) {
                String rel = dir.relativize(p).toString();
                if (Files.isDirectory(p)) {
                    out.put(rel + "/", "dir");
                } else if (!Files.isRegularFile(p)) {
                    out.put(rel, "special"); // a pipe or device: reading it could block
                } else {
                    out.put(rel, sha256(Files.readAllBytes(p)));
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    public static String sha256(byte[] bytes) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(bytes));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** Names in {@code dir} (not recursive), sorted. */
    public static List<String> list(Path dir) {
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
