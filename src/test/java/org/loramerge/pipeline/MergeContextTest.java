package org.loramerge.pipeline;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.cli.Main;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Threads and their buffers follow the memory the JVM may use, so no core count ends in an OutOfMemoryError. */
class MergeContextTest {
    private static final int BLOCK = 8 << 20;

    @Test
    void aMachineWith128CoresUnderTheLaunchersTwoGigabyteCapRunsTheThreadsThatFit() {
        assertEquals(64, MergeContext.threadsFor(128, BLOCK, 2L << 30));
    }

    @Test
    void fewerCoresThanFitRunThemAll() {
        assertEquals(16, MergeContext.threadsFor(16, BLOCK, 2L << 30));
    }

    @TempDir
    Path dir;

    @Test
    void aMergeAskedFor4096ThreadsRunsWithWhatFitsAndSaysSo() throws Exception {
        Path base = TinyModels.writeTinyLlama(dir.resolve("base"));
        Path adapter = TinyModels.writeQProjAdapter(dir.resolve("adapter"));
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        PrintStream old = System.err;
        int code;
        try {
            System.setErr(new PrintStream(err, true, StandardCharsets.UTF_8));
            code = Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", dir.resolve("out").toString(),
                    "--device", "cpu", "--threads", "4096");
        } finally {
            System.setErr(old);
        }
        String text = err.toString(StandardCharsets.UTF_8);
        assertEquals(0, code, text);
        assertTrue(text.contains("4096 threads asked for"), text);
        assertTrue(Files.exists(dir.resolve("out/model.safetensors")));
    }

    @Test
    void aTinyHeapStillRunsOneThread() {
        assertEquals(1, MergeContext.threadsFor(8, BLOCK, 16L << 20));
    }
}
