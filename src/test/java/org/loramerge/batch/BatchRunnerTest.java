package org.loramerge.batch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.errors.OutputException;
import org.loramerge.errors.UsageException;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class BatchRunnerTest {
    @TempDir
    Path dir;

    private List<ManifestEntry> entries(String text) throws Exception {
        Manifest m = Manifest.parse(text, "m");
        assertEquals(List.of(), m.problems());
        return m.entries();
    }

    private static List<List<Integer>> lines(List<List<ManifestEntry>> tasks) {
        return tasks.stream().map(t -> t.stream().map(ManifestEntry::line).toList()).toList();
    }

    @Test
    void linesOfOneBaseAndOutputSettingsShareAPassSplitOverTheDevicesAndOthersRunAlone() throws Exception {
        Files.createDirectories(dir.resolve("llama"));
        Files.createDirectories(dir.resolve("other"));
        StringBuilder sb = new StringBuilder();
        for (int i = 1; i <= 6; i++) {
            sb.append("{\"base\": \"").append(dir.resolve("llama")).append("\", \"adapter\": \"a").append(i).append("\", \"out\": \"o").append(i)
                    .append("\"").append(i == 5 ? ", \"dtype\": \"bfloat16\"" : i == 6 ? ", \"dtype\": \"bf16\"" : "").append("}\n");
        }
        sb.append("{\"base\": \"").append(dir.resolve("other")).append("\", \"adapter\": \"a7\", \"out\": \"o7\"}\n");
        sb.append("{\"base\": \"").append(dir.resolve("llama/.")).append("\", \"adapter\": \"a8\", \"out\": \"o8\"}\n");
        sb.append("{\"base\": \"").append(dir.resolve("llama")).append("\", \"adapter\": \"a9\", \"out\": \"o9\", \"device\": \"cuda:1\"}\n");
        List<ManifestEntry> e = entries(sb.toString());
        assertEquals(List.of(List.of(1, 3, 8), List.of(2, 4), List.of(5, 6), List.of(7), List.of(9)), lines(BatchRunner.tasks(e, 2, true)),
                "lines 1-4 and 8 (the same folder) in two groups for two devices, bf16 and its alias together, another base and another device alone");
        assertEquals(List.of(List.of(1, 2, 3, 4, 8), List.of(5, 6), List.of(7), List.of(9)), lines(BatchRunner.tasks(e, 1, true)));
        assertEquals(9, BatchRunner.tasks(e, 2, false).size(), "--no-shared-read: every line alone");
    }

    @Test
    void devicesAreCpuOrDistinctCudaOrdinals() throws Exception {
        assertEquals(List.of("cpu"), BatchRunner.devices("cpu"));
        assertEquals(List.of("cuda:0", "cuda:1"), BatchRunner.devices("cuda, cuda:1"));
        assertTrue(assertThrows(UsageException.class, () -> BatchRunner.devices("cuda:0,cuda:0")).getMessage().contains("--parallel"));
        assertThrows(UsageException.class, () -> BatchRunner.devices("gpu"));
    }

    @Test
    void aStateFolderInUseByAnotherBatchIsRefusedWithExit4() throws Exception {
        Path manifest = dir.resolve("m.jsonl");
        Files.writeString(manifest, "");
        try (BatchState held = BatchState.open(dir.resolve("m.jsonl.state"), dir)) {
            OutputException e = assertThrows(OutputException.class,
                    () -> BatchRunner.run(manifest, new BatchRunner.Options("cpu", null, false, null, true, null)));
            assertEquals(4, e.exitCode().code());
            assertTrue(e.getMessage().contains("another loramerge batch is running"), e.getMessage());
        }
        BatchResult r = BatchRunner.run(manifest, new BatchRunner.Options("cpu", null, false, null, true, null));
        assertEquals(0, r.totals().lines());
        assertEquals(0, r.totals().exitCode());
    }
}
