package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.apache.spark.SparkConf;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.MergeOptions;

/** What the Spark job tests share: the core's committed models, manifests, and the reference merges. */
final class Jobs {
    /** The repository root: the working folder or a folder above it (Maven runs the tests in spark/, scripts/device/spark-gpu.sh at the root). */
    static final Path REPO = repositoryRoot();
    static final Path TINY_BASE = REPO.resolve("examples/tiny-llama/base");
    static final Path TINY_ADAPTER = REPO.resolve("examples/tiny-llama/adapter");
    static final Path LINEAR_BASE = REPO.resolve("src/test/resources/fixtures/linear_bf16/base");
    static final Path LINEAR_ADAPTER = REPO.resolve("src/test/resources/fixtures/linear_bf16/adapter");
    static final Path SHARDED_BASE = REPO.resolve("src/test/resources/fixtures/sharded_bf16/base");
    static final Path SHARDED_ADAPTER = REPO.resolve("src/test/resources/fixtures/sharded_bf16/adapter");

    private static final ObjectMapper JSON = new ObjectMapper();

    private Jobs() {
    }

    private static Path repositoryRoot() {
        for (Path p = Path.of("").toAbsolutePath(); p != null; p = p.getParent()) {
            if (Files.isDirectory(p.resolve("examples/tiny-llama")) && Files.isDirectory(p.resolve("spark"))) {
                return p;
            }
        }
        throw new IllegalStateException("run the tests from the repository or its spark/ folder: examples/tiny-llama is not above " + Path.of("").toAbsolutePath());
    }

    /** A Spark configuration for tests: small, quiet, and able to read the test object store. */
    static SparkConf conf(String master) {
        return new SparkConf().setMaster(master).setAppName("loramerge-spark-test")
                .set("spark.ui.enabled", "false")
                .set("spark.driver.host", "127.0.0.1")
                .set("spark.driver.bindAddress", "127.0.0.1")
                .set("spark.hadoop.fs.objstore.impl", ObjectStoreFileSystem.class.getName())
                .set("spark.hadoop.fs.objstore.impl.disable.cache", "true");
    }

    static Path manifest(Path dir, String... lines) throws IOException {
        Path m = dir.resolve("merges.jsonl");
        Files.writeString(m, String.join("\n", lines) + "\n");
        return m;
    }

    static String line(Object base, Object adapter, Object out, String extra) {
        return "{\"base\": \"" + base + "\", \"adapter\": \"" + adapter + "\", \"out\": \"" + out + "\"" + extra + "}";
    }

    /** What {@code loramerge merge} writes for the same line, on the CPU engine. */
    static Path reference(Path base, Path adapter, Path out, MergeOptions options) throws Exception {
        LoraMerge.merge(base, adapter, out, options.withDevice("cpu"));
        return out;
    }

    /** Every file of a folder by relative name, the completion record left out. */
    static Map<String, byte[]> files(Path dir) throws IOException {
        Map<String, byte[]> m = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) walk.filter(Files::isRegularFile)::iterator) {
                String name = dir.relativize(p).toString();
                if (!name.equals(CompletionMarker.NAME)) {
                    m.put(name, Files.readAllBytes(p));
                }
            }
        }
        return m;
    }

    static void assertSameFiles(Path expected, Path actual) throws IOException {
        Map<String, byte[]> e = files(expected);
        Map<String, byte[]> a = files(actual);
        assertEquals(e.keySet(), a.keySet(), actual + ": the same files as " + expected);
        for (String name : e.keySet()) {
            assertEquals(java.util.Arrays.hashCode(e.get(name)), java.util.Arrays.hashCode(a.get(name)), actual + "/" + name + " differs from the reference");
            org.junit.jupiter.api.Assertions.assertArrayEquals(e.get(name), a.get(name), name);
        }
    }

    /** The names in {@code dir} that are neither the outputs nor the job's own inputs: attempt folders, claims, partial files. */
    static List<String> hidden(Path dir) throws IOException {
        List<String> names = new ArrayList<>();
        try (Stream<Path> s = Files.list(dir)) {
            s.map(p -> p.getFileName().toString()).filter(n -> n.startsWith(".")).forEach(names::add);
        }
        return names;
    }

    static List<JsonNode> results(Path file) throws IOException {
        List<JsonNode> rows = new ArrayList<>();
        for (String l : Files.readAllLines(file)) {
            rows.add(JSON.readTree(l));
        }
        return rows;
    }
}
