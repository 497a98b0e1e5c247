package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.spark.api.java.JavaSparkContext;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.MergeOptions;

/**
 * Two attempts of each line at once, as speculative execution makes them: two jobs of the same
 * manifest run together on one context, every first attempt held back before its commit
 * ({@value SparkBatch#SLOW_FIRST_MILLIS}) so that the two reach the commit together. (Spark
 * launches a speculative copy only on another host than the original, which a one-machine test
 * cannot have; OutputCommitTest races four attempts on the protocol itself.)
 */
// a job whose executors cannot start (a missing module, a bad class path) would wait for them for ever: fail instead
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class DuplicateAttemptsTest {
    @TempDir
    Path tmp;

    @Test
    void twoAttemptsOfEachLineLeaveOneCompleteOutputAndNoAttemptFiles() throws Exception {
        Path out = tmp.resolve("out");
        Path store = tmp.resolve("store");
        Path manifest = Jobs.manifest(tmp,
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, out.resolve("tiny"), ""),
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, ObjectStoreFileSystem.location(store.resolve("tiny")), ""));
        List<ResultRow> first;
        List<ResultRow> second;
        try (JavaSparkContext sc = new JavaSparkContext(Jobs.conf("local[4]").set(SparkBatch.SLOW_FIRST_MILLIS, "1500"))) {
            ExecutorService pool = Executors.newFixedThreadPool(2);
            Future<List<ResultRow>> a = pool.submit(() -> SparkBatch.run(sc, manifest.toString(), tmp.resolve("a.jsonl").toString()));
            Future<List<ResultRow>> b = pool.submit(() -> SparkBatch.run(sc, manifest.toString(), tmp.resolve("b.jsonl").toString()));
            first = a.get();
            second = b.get();
            pool.shutdown();
        }
        Path reference = Jobs.reference(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("ref"), MergeOptions.defaults());
        for (int i = 0; i < 2; i++) {
            assertTrue(List.of("done", "skipped").contains(first.get(i).status()), first.get(i).toString());
            assertTrue(List.of("done", "skipped").contains(second.get(i).status()), second.get(i).toString());
            assertEquals(first.get(i).checksum(), second.get(i).checksum(), "both attempts report the one output");
        }
        Jobs.assertSameFiles(reference, out.resolve("tiny"));
        Jobs.assertSameFiles(reference, store.resolve("tiny"));
        assertEquals(List.of(), Jobs.hidden(out), "the losing attempt left no folder");
        assertEquals(List.of(), Jobs.hidden(store), "the losing attempt left no claim");
    }
}
