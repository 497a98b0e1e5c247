package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaSparkContext;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.MergeOptions;

/**
 * The job in local-cluster mode: a master and two workers in this JVM, each executor a JVM of its
 * own (so the tasks, the broadcast manifest and the commit run as on a cluster), given this test's
 * class path. The first attempt of every task fails after uploading two files (the test hook
 * {@value SparkBatch#FAIL_AFTER_FILES}); Spark runs each again, on either executor.
 */
// a job whose executors cannot start (a missing module, a bad class path) would wait for them for ever: fail instead
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class SparkBatchClusterTest {
    private static JavaSparkContext sc;
    private static Path sparkHome;

    @TempDir
    Path tmp;

    @BeforeAll
    static void start() throws Exception {
        // the worker builds executor command lines from a Spark home; an empty one does, with the class path given here
        // the workers launch executors from SPARK_HOME (set by the pom) and want its jars/ folder: empty, the class path below has the jars
        String home = System.getenv("SPARK_HOME");
        assumeTrue(home != null, "SPARK_HOME is not set: run this test through Maven (spark/pom.xml sets it)");
        sparkHome = Path.of(home);
        Files.createDirectories(sparkHome.resolve("jars"));
        String classPath = System.getProperty("java.class.path");
        SparkConf conf = Jobs.conf("local-cluster[2,1,1024]")
                .set("spark.executor.extraClassPath", classPath)
                .set("spark.driver.extraClassPath", classPath)
                .set("spark.task.maxFailures", "2")
                .set(SparkBatch.FAIL_AFTER_FILES, "2");
        sc = new JavaSparkContext(conf);
    }

    @AfterAll
    static void stop() {
        if (sc != null) {
            sc.close();
        }
    }

    @Test
    void tasksFailedMidUploadAreRetriedOnTheClusterAndTheOutputsAreCompleteWithNoAttemptFoldersLeft() throws Exception {
        Path out = tmp.resolve("out");
        Path store = tmp.resolve("store");
        Path manifest = Jobs.manifest(tmp,
                Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, out.resolve("tiny"), ""),
                Jobs.line(Jobs.LINEAR_BASE, Jobs.LINEAR_ADAPTER, out.resolve("linear"), ", \"dtype\": \"f16\""),
                Jobs.line(Jobs.SHARDED_BASE, Jobs.SHARDED_ADAPTER, out.resolve("sharded"), ""),
                Jobs.line(ObjectStoreFileSystem.location(Jobs.TINY_BASE), ObjectStoreFileSystem.location(Jobs.TINY_ADAPTER),
                        ObjectStoreFileSystem.location(store.resolve("tiny")), ""));
        Path results = tmp.resolve("results.jsonl");

        List<ResultRow> rows = SparkBatch.run(sc, manifest.toString(), results.toString());

        assertEquals(List.of("done", "done", "done", "done"), rows.stream().map(ResultRow::status).toList(), rows.toString());
        assertEquals(List.of(1, 1, 1, 1), rows.stream().map(ResultRow::attempt).toList(), "each line committed by its second attempt");
        Jobs.assertSameFiles(Jobs.reference(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("ref/tiny"), MergeOptions.defaults()), out.resolve("tiny"));
        Jobs.assertSameFiles(Jobs.reference(Jobs.LINEAR_BASE, Jobs.LINEAR_ADAPTER, tmp.resolve("ref/linear"), MergeOptions.defaults().withDtype("f16")),
                out.resolve("linear"));
        Jobs.assertSameFiles(Jobs.reference(Jobs.SHARDED_BASE, Jobs.SHARDED_ADAPTER, tmp.resolve("ref/sharded"), MergeOptions.defaults()),
                out.resolve("sharded"));
        Jobs.assertSameFiles(tmp.resolve("ref/tiny"), store.resolve("tiny"));
        assertEquals(rows.get(0).checksum(), rows.get(3).checksum(), "the same merge on either store has one checksum");
        assertEquals(List.of(), Jobs.hidden(out), "no attempt folders left");
        assertEquals(List.of(), Jobs.hidden(store), "no claims left");
        assertEquals(4, Jobs.results(results).size());
    }
}
