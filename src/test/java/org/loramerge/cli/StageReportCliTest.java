package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Where a merge's time went, as {@code merge --json} and {@code merge --stats} report it, and the hidden knobs that move it. */
class StageReportCliTest {
    @TempDir
    Path dir;

    private Path base;
    private Path adapter;

    private void models() {
        base = TinyModels.writeTinyLlama(dir.resolve("base"));
        adapter = TinyModels.writeQProjAdapter(dir.resolve("adapter"));
    }

    @Test
    void mergeJsonReportsEachStageWithItsClockSecondsAndBytes() throws Exception {
        models();
        CliRun.Result r = CliRun.merge(base, adapter, dir.resolve("out"), "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode json = new ObjectMapper().readTree(r.out());
        JsonNode stages = json.get("stages");
        List<String> names = new ArrayList<>();
        stages.fieldNames().forEachRemaining(names::add);
        for (String stage : List.of("plan", "engine_start", "stream", "finish", "commit", "read", "merge", "write")) {
            assertTrue(names.contains(stage), stage + " missing: " + names);
        }
        assertEquals(List.of("clock", "seconds", "bytes", "events"), fieldNames(stages.get("write")));
        assertEquals("wall", stages.get("plan").get("clock").asText());
        assertEquals(json.get("bytes_written").asLong(), stages.get("write").get("bytes").asLong());
        assertTrue(stages.get("stream").get("seconds").asDouble() > 0);
        assertTrue(json.has("seconds") && json.has("start_seconds") && json.has("tensors"), "the keys consumers read are still there");
    }

    private static List<String> fieldNames(JsonNode n) {
        List<String> out = new ArrayList<>();
        n.fieldNames().forEachRemaining(out::add);
        return out;
    }

    @Test
    void statsPrintsOneLineOfStagesEvenWhenQuiet() {
        models();
        CliRun.Result r = CliRun.merge(base, adapter, dir.resolve("out"), "--stats");
        assertEquals(0, r.code(), r.err());
        List<String> lines = r.err().lines().filter(l -> l.startsWith("stages: ")).toList();
        assertEquals(1, lines.size(), r.err());
        assertTrue(lines.get(0).contains("write ") && lines.get(0).contains("GB/s"), lines.get(0));
        CliRun.Result plain = CliRun.merge(base, adapter, dir.resolve("out2"));
        assertFalse(plain.err().contains("stages: "), "without --stats a quiet merge prints nothing: " + plain.err());
    }

    @Test
    void mappedWritesAndSmallBlocksSetAsKnobsWriteTheSameModelAndSaySo() throws Exception {
        models();
        CliRun.Result plain = CliRun.merge(base, adapter, dir.resolve("plain"));
        assertEquals(0, plain.code(), plain.err());
        CliRun.Result tuned;
        System.setProperty("loramerge.write", "mapped");
        System.setProperty("loramerge.blockBytes", Integer.toString(1 << 20));
        try {
            tuned = CliRun.merge(base, adapter, dir.resolve("tuned"), "--json");
        } finally {
            System.clearProperty("loramerge.write");
            System.clearProperty("loramerge.blockBytes");
        }
        assertEquals(0, tuned.code(), tuned.err());
        assertTrue(tuned.out().contains("streaming knobs: block 1024 KiB") && tuned.out().contains("mapped writes"), tuned.out());
        assertArrayEquals(Files.readAllBytes(dir.resolve("plain/model.safetensors")), Files.readAllBytes(dir.resolve("tuned/model.safetensors")));
    }

    @Test
    void aQloraMergeToNf4WithMappedWritesAndPositionalReadsWritesTheSameCodesAndQuantState() throws Exception {
        Path qlora = Path.of("src/test/resources/qlora/dq_bs64");
        CliRun.Result plain = CliRun.merge(qlora.resolve("base"), qlora.resolve("adapter"), dir.resolve("plain"), "--to", "nf4");
        assertEquals(0, plain.code(), plain.err());
        CliRun.Result tuned;
        System.setProperty("loramerge.write", "mapped");
        System.setProperty("loramerge.read", "pread");
        try {
            tuned = CliRun.merge(qlora.resolve("base"), qlora.resolve("adapter"), dir.resolve("tuned"), "--to", "nf4");
        } finally {
            System.clearProperty("loramerge.write");
            System.clearProperty("loramerge.read");
        }
        assertEquals(0, tuned.code(), tuned.err());
        List<String> names = TinyModels.list(dir.resolve("plain"));
        assertTrue(names.stream().anyMatch(n -> n.endsWith(".safetensors")), names.toString());
        for (String name : names) {
            assertArrayEquals(Files.readAllBytes(dir.resolve("plain").resolve(name)), Files.readAllBytes(dir.resolve("tuned").resolve(name)), name);
        }
    }

    @Test
    void aMistypedKnobIsAUsageErrorThatNamesThePropertyAndWritesNothing() {
        models();
        Path out = dir.resolve("out");
        CliRun.Result r;
        System.setProperty("loramerge.write", "mmap");
        try {
            r = CliRun.merge(base, adapter, out);
        } finally {
            System.clearProperty("loramerge.write");
        }
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
        assertTrue(r.err().contains("-Dloramerge.write=mmap: expected pwrite, mapped, mixed or auto"), r.err());
        CliRun.assertNoOutput(out);
    }
}
