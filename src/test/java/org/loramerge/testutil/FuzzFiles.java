package org.loramerge.testutil;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

/**
 * How the fuzz targets turn one input into files: inputs of several files are their parts joined by
 * a NUL byte (JSON text never holds a raw NUL), and a safetensors file given as its header alone gets
 * a data section of the size its header asks for, so that mutations of names, shapes and dtypes reach
 * the code past the file's own validation (the raw format is fuzzed on its own).
 */
public final class FuzzFiles {
    /** The largest data section a header-only input is given: bigger ones are written empty (and so refused). */
    public static final int MAX_DATA_BYTES = 1 << 20;
    private static final ObjectMapper JSON = new ObjectMapper();

    private FuzzFiles() {
    }

    /** {@code data} cut at each NUL byte, into at most {@code maxParts} parts (the last keeps any further NULs). */
    public static List<byte[]> parts(byte[] data, int from, int maxParts) {
        List<byte[]> out = new ArrayList<>();
        int start = from;
        for (int i = from; i < data.length && out.size() < maxParts - 1; i++) {
            if (data[i] == 0) {
                out.add(Arrays.copyOfRange(data, start, i));
                start = i + 1;
            }
        }
        out.add(Arrays.copyOfRange(data, Math.min(start, data.length), data.length));
        return out;
    }

    /** The parts joined by NUL bytes: how a seed is written. */
    public static byte[] join(List<byte[]> parts) {
        int n = parts.size() - 1;
        for (byte[] p : parts) {
            n += p.length;
        }
        ByteBuffer b = ByteBuffer.allocate(Math.max(n, 0));
        for (int i = 0; i < parts.size(); i++) {
            if (i > 0) {
                b.put((byte) 0);
            }
            b.put(parts.get(i));
        }
        return b.array();
    }

    /**
     * Writes a safetensors file made of {@code header} (the JSON) and a data section as long as the
     * largest end offset the header gives (0 where it cannot be read, or is over {@link #MAX_DATA_BYTES}),
     * filled by repeating {@code fill} (zeros where it is empty).
     */
    public static void writeHeaderOnly(Path file, byte[] header, byte[] fill) throws IOException {
        long dataSize = dataEnd(header);
        byte[] out = new byte[8 + header.length + (int) dataSize];
        ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN).putLong(header.length);
        System.arraycopy(header, 0, out, 8, header.length);
        if (fill.length > 0) {
            for (int i = 0; i < dataSize; i++) {
                out[8 + header.length + i] = fill[i % fill.length];
            }
        }
        Files.write(file, out);
    }

    /** The largest data_offsets end in a header; 0 where the header is not a JSON object, has none, or one past the cap. */
    static long dataEnd(byte[] header) {
        JsonNode root;
        try {
            root = JSON.readTree(header);
        } catch (IOException | RuntimeException e) {
            return 0;
        }
        long end = 0;
        if (root != null && root.isObject()) {
            for (Map.Entry<String, JsonNode> e : root.properties()) {
                JsonNode offsets = e.getValue().path("data_offsets");
                if (offsets.isArray() && offsets.size() == 2 && offsets.get(1).canConvertToLong()) {
                    long v = offsets.get(1).longValue();
                    if (v < 0 || v > MAX_DATA_BYTES) {
                        return 0;
                    }
                    end = Math.max(end, v);
                }
            }
        }
        return end;
    }

    /** The header JSON of a safetensors file (its padding included), for a header-only seed. */
    public static byte[] headerOf(Path safetensors) {
        try {
            byte[] all = Files.readAllBytes(safetensors);
            long n = ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN).getLong();
            return Arrays.copyOfRange(all, 8, 8 + (int) n);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A JSON file's content without its whitespace (a compact seed that means the same). */
    public static byte[] compactJson(Path file) {
        try {
            return JSON.writeValueAsBytes(JSON.readTree(file.toFile()));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A fresh, empty {@code dir}: what the previous input left there is removed. */
    public static Path emptyDir(Path dir) throws IOException {
        if (Files.exists(dir)) {
            try (Stream<Path> s = Files.walk(dir)) {
                for (Path p : s.sorted(Comparator.reverseOrder()).toList()) {
                    Files.delete(p);
                }
            }
        }
        return Files.createDirectories(dir);
    }

    /** A per-run scratch folder, removed when the JVM exits. */
    public static Path scratch(String name) {
        try {
            Path dir = Files.createTempDirectory("loramerge-fuzz-" + name);
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try {
                    emptyDir(dir);
                    Files.delete(dir);
                } catch (IOException e) {
                    // a temporary folder left behind is harmless
                }
            }));
            return dir;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
