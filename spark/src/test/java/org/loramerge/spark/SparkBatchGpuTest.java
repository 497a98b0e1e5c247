package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaSparkContext;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.MergeOptions;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.select.Backends;

/**
 * GPU scheduling: the job with two GPU resources, one per task
 * ({@code spark.task.resource.gpu.amount=1}), found by a discovery script as on a cluster.
 */
// a job whose executors cannot start (a missing module, a bad class path) would wait for them for ever: fail instead
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class SparkBatchGpuTest {
    @TempDir
    Path tmp;

    /** A discovery script that reports {@code addresses}, as Spark's examples/src/main/scripts/getGpusResources.sh does from nvidia-smi. */
    private Path discoveryScript(String addresses) throws IOException {
        Path script = tmp.resolve("gpus.sh");
        Files.writeString(script, "#!/usr/bin/env bash\n" + "echo '{\"name\": \"gpu\", \"addresses\": [" + addresses + "]}'\n");
        Files.setPosixFilePermissions(script, PosixFilePermissions.fromString("rwxr-xr-x"));
        return script;
    }

    /**
     * One worker with two GPUs and an executor holding both, a task taking one: local-cluster mode,
     * as Spark's local mode offers no resources to tasks (its tasks would wait for a GPU forever).
     */
    private static SparkConf gpuConf(Path script) throws IOException {
        String home = System.getenv("SPARK_HOME");
        assumeTrue(home != null, "SPARK_HOME is not set: run this test through Maven (spark/pom.xml sets it)");
        Files.createDirectories(Path.of(home, "jars"));
        String classPath = System.getProperty("java.class.path");
        return Jobs.conf("local-cluster[1,2,1024]")
                .set("spark.executor.extraClassPath", classPath)
                .set("spark.driver.extraClassPath", classPath)
                .set("spark.worker.resource.gpu.amount", "2")
                .set("spark.worker.resource.gpu.discoveryScript", script.toString())
                .set("spark.executor.resource.gpu.amount", "2")
                .set("spark.task.resource.gpu.amount", "1");
    }

    private List<ResultRow> runFour(JavaSparkContext sc) throws Exception {
        List<String> lines = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
            lines.add(Jobs.line(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("out/tiny" + i), ""));
        }
        return SparkBatch.run(sc, Jobs.manifest(tmp, lines.toArray(String[]::new)).toString(), tmp.resolve("results.jsonl").toString());
    }

    @Test
    void eachTaskIsGivenTheGpuSparkAssignedItAndNeverTheJobsDefaultDevice() throws Exception {
        // fake addresses 7 and 9: no machine has them, so every line fails in the engine, naming the device it was given
        List<ResultRow> rows;
        try (JavaSparkContext sc = new JavaSparkContext(gpuConf(discoveryScript("\"7\", \"9\"")))) {
            rows = runFour(sc);
        }
        Set<String> devices = new TreeSet<>();
        for (ResultRow r : rows) {
            devices.add(r.device());
            assertEquals("failed", r.status(), r.toString());
            assertTrue(r.error().matches("(?s).*(NVIDIA|GPU|CUDA|cuda).*"), r.error());
        }
        // two task slots, two GPUs: the first two tasks start together, one on each
        assertEquals(Set.of("cuda:7", "cuda:9"), devices);
    }

    @Tag("gpu")
    @Test
    void onTwoGpusTheLinesRunOnBothAndWriteTheCpuEnginesBytes() throws Exception {
        int gpus = 0;
        for (int i = 0; i < 2; i++) {
            try {
                Backends.openCuda(i, 1).close();
                gpus++;
            } catch (DeviceUnavailableException e) {
                assumeTrue(i > 0 || e.devicePresent(), "no usable GPU: " + e.getMessage());
            }
        }
        assumeTrue(gpus == 2, "this test needs two GPUs; found " + gpus);
        List<ResultRow> rows;
        try (JavaSparkContext sc = new JavaSparkContext(gpuConf(discoveryScript("\"0\", \"1\"")))) {
            rows = runFour(sc);
        }
        Path reference = Jobs.reference(Jobs.TINY_BASE, Jobs.TINY_ADAPTER, tmp.resolve("ref"), MergeOptions.defaults());
        Set<String> devices = new TreeSet<>();
        for (int i = 0; i < 4; i++) {
            assertEquals("done", rows.get(i).status(), rows.get(i).toString());
            devices.add(rows.get(i).device());
            Jobs.assertSameFiles(reference, tmp.resolve("out/tiny" + i));
        }
        assertEquals(Set.of("cuda:0", "cuda:1"), devices, "both GPUs ran merges");
    }
}
