package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.spark.api.java.JavaSparkContext;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.MergeOptions;
import org.loramerge.batch.ManifestException;
import org.loramerge.errors.UsageException;

/** The job in local mode (one JVM, two task slots): merges on a local disk and on a store without rename. */
// a job whose executors cannot start (a missing module, a bad class path) would wait for them for ever: fail instead
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class SparkBatchLocalTest {
    private static JavaSparkContext sc;

    @TempDir
    Path tmp;

    @BeforeAll
    static void start() {
        sc = new JavaSparkContext(Jobs.conf("local[2]"));
    }

    @AfterAll
    static void stop() {
        sc.close();
    }

    @Test
    void eachLineIsMergedAsLoramergeMergeWritesItAndAFailingLineIsAFailedRowWhileTheOthersAreDone() throws Exception {
        Path out = tmp.resolve("out");
        Path store = tmp.resolve("store");
        Path manifest = Jobs.manifest(tmp,
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, out.resolve("tiny"), ""),
                Jobs.line(Jobs.LINEAR_BASE, Jobs.LINEAR_ADAPTER, out.resolve("linear"), ", \"verify\": true, \"dtype\": \"f32\""),
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_BASE, out.resolve("bad"), ""),
                Jobs.line(ObjectStoreFileSystem.location(Jobs.SHARDED_BASE), ObjectStoreFileSystem.location(Jobs.SHARDED_ADAPTER),
                        ObjectStoreFileSystem.location(store.resolve("sharded")), ""),
                "{\"base\": \"nowhere\", \"adapter\": \"x\", \"out\": \"y\"}",
                "not json");
        Path results = tmp.resolve("results.jsonl");

        List<ResultRow> rows = SparkBatch.run(sc, manifest.toString(), results.toString());

        assertEquals(List.of(1, 2, 3, 4, 5, 6), rows.stream().map(ResultRow::line).toList());
        assertEquals(List.of("done", "done", "failed", "done", "failed", "failed"), rows.stream().map(ResultRow::status).toList());
        Jobs.assertSameFiles(Jobs.reference(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("ref/tiny"), MergeOptions.defaults()), out.resolve("tiny"));
        Jobs.assertSameFiles(Jobs.reference(Jobs.LINEAR_BASE, Jobs.LINEAR_ADAPTER, tmp.resolve("ref/linear"), MergeOptions.defaults().withDtype("f32").withVerifyRows(16)),
                out.resolve("linear"));
        Jobs.assertSameFiles(Jobs.reference(Jobs.SHARDED_BASE, Jobs.SHARDED_ADAPTER, tmp.resolve("ref/sharded"), MergeOptions.defaults()),
                store.resolve("sharded"));
        assertTrue(Files.exists(store.resolve("sharded").resolve(CompletionMarker.NAME)), "the object store's output has its completion record");

        assertTrue(rows.get(1).verification().startsWith("passed: 16 rows"), rows.get(1).verification());
        assertNull(rows.get(0).verification(), "no verification where the line asked none");
        assertTrue(rows.get(2).error().contains(Jobs.TINY_BASE.toString()), rows.get(2).error());
        assertTrue(rows.get(4).error().contains("does not exist"), rows.get(4).error());
        assertTrue(rows.get(5).error().contains("not a JSON object"), rows.get(5).error());
        assertTrue(Files.notExists(out.resolve("bad")), "a failed line writes nothing");
        for (ResultRow r : List.of(rows.get(0), rows.get(1), rows.get(3))) {
            assertEquals("cpu", r.device());
            assertEquals(0, r.attempt());
            assertEquals(64, r.checksum().length());
        }
        assertEquals(Jobs.files(out.resolve("tiny")).values().stream().mapToLong(b -> b.length).sum(), rows.get(0).bytes());
        assertEquals(List.of(), Jobs.hidden(out), "no attempt folders beside the outputs");
        assertEquals(List.of(), Jobs.hidden(store), "no claims beside the object store's output");

        List<JsonNode> table = Jobs.results(results);
        assertEquals(6, table.size());
        assertEquals("done", table.get(0).get("status").asText());
        assertEquals(rows.get(0).checksum(), table.get(0).get("checksum").asText());
        assertTrue(table.get(2).get("error").asText().length() > 0);
        assertTrue(table.get(1).has("verification") && table.get(1).has("seconds") && table.get(1).has("bytes") && table.get(1).has("device")
                && table.get(1).has("attempt") && table.get(1).has("out"));

        // a re-run skips what is committed and tries the rest again
        List<ResultRow> again = SparkBatch.run(sc, manifest.toString(), results.toString());
        assertEquals(List.of("skipped", "skipped", "failed", "skipped", "failed", "failed"), again.stream().map(ResultRow::status).toList());
        assertEquals(rows.get(3).checksum(), again.get(3).checksum());
        Jobs.assertSameFiles(tmp.resolve("ref/tiny"), out.resolve("tiny"));
    }

    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void aReRunDoesNotSkipAnOutputWhoseLineOrAdapterFilesChangedButFailsTheLineAndKeepsTheOutput(boolean onObjectStore) throws Exception {
        Path adapter = tmp.resolve("adapter");
        Files.createDirectories(adapter);
        try (var files = Files.list(Jobs.TINY_ADAPTER)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                Files.copy(f, adapter.resolve(f.getFileName()));
            }
        }
        Path out = tmp.resolve("out/tiny");
        Object outLocation = onObjectStore ? ObjectStoreFileSystem.location(out) : out;
        Path manifest = Jobs.manifest(tmp, Jobs.line(Jobs.TINY_BASE, adapter, outLocation, ""));
        Path results = tmp.resolve("results.jsonl");
        assertEquals("done", SparkBatch.run(sc, manifest.toString(), results.toString()).get(0).status());
        Map<String, byte[]> first = Jobs.files(out);
        assertEquals("skipped", SparkBatch.run(sc, manifest.toString(), results.toString()).get(0).status(), "the same line and inputs skip");

        // the line now asks for another dtype, into the same out
        Jobs.manifest(tmp, Jobs.line(Jobs.TINY_BASE, adapter, outLocation, ", \"dtype\": \"f32\""));
        ResultRow changedLine = SparkBatch.run(sc, manifest.toString(), results.toString()).get(0);
        assertEquals("failed", changedLine.status());
        assertTrue(changedLine.error().contains("written for another line") && changedLine.error().contains("delete the folder"), changedLine.error());

        // the line as first written, but the adapter's weights rewritten in place since
        Jobs.manifest(tmp, Jobs.line(Jobs.TINY_BASE, adapter, outLocation, ""));
        Path weights = adapter.resolve("adapter_model.safetensors");
        Files.setLastModifiedTime(weights, java.nio.file.attribute.FileTime.fromMillis(Files.getLastModifiedTime(weights).toMillis() + 5_000));
        ResultRow changedAdapter = SparkBatch.run(sc, manifest.toString(), results.toString()).get(0);
        assertEquals("failed", changedAdapter.status());
        assertTrue(changedAdapter.error().contains("adapter files changed"), changedAdapter.error());
        Map<String, byte[]> now = Jobs.files(out);
        assertEquals(first.keySet(), now.keySet(), "the output is kept as it was");
        for (String f : first.keySet()) {
            assertArrayEquals(first.get(f), now.get(f), f);
        }
    }

    @Test
    void twoLinesWritingOneOutputRefuseTheManifestBeforeAnythingRuns() throws Exception {
        Path manifest = Jobs.manifest(tmp,
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("out/a"), ""),
                Jobs.line(Jobs.LINEAR_BASE, Jobs.LINEAR_ADAPTER, "out/a", ""));
        ManifestException e = assertThrows(ManifestException.class, () -> SparkBatch.run(sc, manifest.toString(), tmp.resolve("r.jsonl").toString()));
        assertTrue(e.getMessage().contains("lines 1 and 2"), e.getMessage());
        assertTrue(Files.notExists(tmp.resolve("out")) && Files.notExists(tmp.resolve("r.jsonl")), "nothing ran");
    }

    @Test
    void strictRefusesAManifestWithABadLineBeforeAnythingRuns() throws Exception {
        Path manifest = Jobs.manifest(tmp, Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, "out/a", ""), "{\"base\": 1}");
        ManifestException e = assertThrows(ManifestException.class,
                () -> SparkBatch.run(sc, manifest.toString(), tmp.resolve("r.jsonl").toString(), "--strict"));
        assertTrue(e.getMessage().contains(":2:"), e.getMessage());
        assertTrue(Files.notExists(tmp.resolve("out")));
    }

    @Test
    void anUnknownOptionIsAUsageErrorThatShowsTheUsage() {
        UsageException e = assertThrows(UsageException.class, () -> SparkBatch.run(sc, "m.jsonl", "r.jsonl", "--gpus", "2"));
        assertTrue(e.getMessage().contains("usage: SparkBatch MANIFEST RESULTS"), e.getMessage());
    }
}
