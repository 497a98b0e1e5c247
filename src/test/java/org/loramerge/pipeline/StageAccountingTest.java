package org.loramerge.pipeline;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Stages;
import org.loramerge.engine.Tuning;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The stage accounting of a merge adds up to what the merge did, and the streaming knobs (block
 * size, window, mapped or mixed writes, flushes) change how the bytes get there, never which bytes.
 */
class StageAccountingTest {
    private static final Path FIXTURES = Path.of("src/test/resources/fixtures");

    @TempDir
    Path dir;

    private MergeReport merge(String fixture, Path out, MergeRunner.Options options) throws Exception {
        Path caseDir = FIXTURES.resolve(fixture);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"));
             CpuBackend cpu = new CpuBackend(3); AtomicOutput o = AtomicOutput.create(out, false, List.of(caseDir))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            return MergeRunner.run(plan, cpu, o, options, Progress.silent());
        }
    }

    @Test
    void everyWrittenByteIsCountedOnceAsReadMergedOrCopiedAndWritten() throws Exception {
        MergeReport r = merge("sharded_bf16", dir.resolve("out"), new MergeRunner.Options(false, 256, 0));
        Map<String, Stages.Total> s = r.stages().totals();
        for (String stage : List.of("stream", "shard_finish", "finish", "commit", "factors", "buffer_wait", "read", "merge", "write", "in_order_wait")) {
            assertTrue(s.containsKey(stage), stage + " missing from " + s.keySet());
        }
        assertEquals(r.bytesWritten, s.get("write").bytes(), "written bytes");
        assertEquals(r.bytesWritten, s.get("stream").bytes(), "streamed bytes");
        assertEquals("wall", s.get("stream").clock());
        assertEquals("threads", s.get("write").clock());
        // a merged block is read, merged and written once; a copied chunk read and written once
        assertEquals(s.get("merge").events(), s.get("buffer_wait").events());
        assertEquals(s.get("read").events(), s.get("write").events());
        assertTrue(s.get("merge").events() > r.tensorsMerged, "256-byte blocks cut each merged tensor into several: " + s.get("merge").events());
        assertTrue(!s.containsKey("upload") && !s.containsKey("stage_in"), "the CPU engine has no device stages: " + s.keySet());
        String line = Stages.line(s);
        assertTrue(line.startsWith("stream ") && line.contains(" | write ") && line.contains(" thr ") && line.contains("GB/s"), line);
    }

    static Stream<Arguments> tunedCases() {
        return Stream.of("sharded_bf16", "linear_f16", "linear_f32", "dora_linear", "dora_conv1d", "embedding", "trainable_tokens",
                "modules_to_save_resized").flatMap(f -> Stream.of(Arguments.of(f, false, WriteMode.MAPPED), Arguments.of(f, true, WriteMode.MAPPED),
                        Arguments.of(f, true, WriteMode.MIXED)));
    }

    @ParameterizedTest(name = "{0}, positional reads {1}, {2} writes")
    @MethodSource("tunedCases")
    void mappedOrMixedWritesSmallBlocksANarrowWindowAndPositionalReadsWriteTheBytesOfTheDefaults(String fixture, boolean pread, WriteMode writes)
            throws Exception {
        Path plain = dir.resolve("plain");
        Path tuned = dir.resolve("tuned");
        merge(fixture, plain, new MergeRunner.Options(false, Backend.DEFAULT_BLOCK_BYTES, 0, 2, WriteMode.POSITIONAL, null));
        // a flush after every block with mapped writes, none before a shard's end with mixed ones
        long flushBytes = writes == WriteMode.MIXED ? 0 : 1;
        MergeReport r = merge(fixture, tuned, new MergeRunner.Options(false, 256, 0, 1, writes, pread, Tuning.DEFAULT_SHARDS_AT_ONCE, flushBytes));
        assertTrue(r.bytesWritten > 0);
        List<Path> files;
        try (Stream<Path> s = Files.list(plain)) {
            files = s.sorted().toList();
        }
        for (Path p : files) {
            assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(tuned.resolve(p.getFileName())), fixture + ": " + p.getFileName());
        }
        try (Stream<Path> s = Files.list(tuned)) {
            assertEquals(files.size(), s.count(), "the same files");
        }
    }
}
