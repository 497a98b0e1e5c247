package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.RoomLedger;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Review: a merge written through mappings claims its room before its workers start, so one refused
 * leaves no threads behind, writes nothing, and one that runs gives its claim back.
 */
class MappedRoomMergeTest {
    private static final Path FIXTURE = Path.of("src/test/resources/fixtures/sharded_bf16");

    @TempDir
    Path dir;

    private MergeReport merge(Path out, WriteMode writes) throws Exception {
        try (Checkpoint base = Checkpoint.open(FIXTURE.resolve("base")); LoraAdapter adapter = LoraAdapter.open(FIXTURE.resolve("adapter"));
             CpuBackend cpu = new CpuBackend(3); AtomicOutput o = AtomicOutput.create(out, false, List.of(FIXTURE))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            return MergeRunner.run(plan, cpu, o, new MergeRunner.Options(false, Backend.DEFAULT_BLOCK_BYTES, 0, 2, writes, null), Progress.silent());
        }
    }

    private static long workers() {
        return Thread.getAllStackTraces().keySet().stream().filter(t -> t.getName().equals("loramerge-worker") && t.isAlive()).count();
    }

    @Test
    void theBytesAShardReportsWrittenShrinkItsModelsClaim() throws Exception {
        assumeTrue(Files.getFileStore(dir).getTotalSpace() > 0, "a file system that keeps a count of its room");
        try (AtomicOutput o = AtomicOutput.create(dir.resolve("m"), false, List.of());
             RoomLedger.Claim room = RoomLedger.claim(dir, "m", "the merged model", 10_000, false);
             CheckpointWriter w = new CheckpointWriter(o, Progress.silent(), WriteMode.MIXED, 0, room)) {
            assertEquals(10_000, RoomLedger.outstanding(dir));
            CheckpointWriter.Shard s = w.openShard("model.safetensors", List.of(new SafetensorsWriter.Entry("w", DType.U8, new long[] {4000})));
            s.writeAt(0, ByteBuffer.wrap(new byte[4000]));
            s.written(4000);
            assertEquals(6000, RoomLedger.outstanding(dir));
            s.finish();
            s.close();
        }
        assertEquals(0, RoomLedger.outstanding(dir));
    }

    @Test
    void aSharedPassWithoutRoomForItsSecondModelIsRefusedAndGivesBackTheFirstsClaim() throws Exception {
        assumeTrue(Files.getFileStore(dir).getTotalSpace() > 0, "a file system that keeps a count of its room");
        long usable = Files.getFileStore(dir).getUsableSpace();
        try (Checkpoint base = Checkpoint.open(FIXTURE.resolve("base")); LoraAdapter adapter = LoraAdapter.open(FIXTURE.resolve("adapter"));
             CpuBackend cpu = new CpuBackend(3);
             AtomicOutput a = AtomicOutput.create(dir.resolve("a"), false, List.of(FIXTURE));
             AtomicOutput b = AtomicOutput.create(dir.resolve("b"), false, List.of(FIXTURE))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            MergeRunner.Options mixed = new MergeRunner.Options(false, Backend.DEFAULT_BLOCK_BYTES, 0, 2, WriteMode.MIXED, null);
            long before = workers();
            // each model of the pass claims its few KB and a MiB for its small files: another model this process
            // writes there leaves room for one of them, not for both
            long left = 3L << 19;
            try (RoomLedger.Claim other = RoomLedger.claim(dir, "other", "the merged model", usable - left, false)) {
                IOException e = assertThrows(IOException.class, () -> MergeRunner.runShared(List.of(plan, plan), cpu, List.of(a, b), List.of(mixed, mixed)));
                assertTrue(e.getMessage().startsWith(b.target() + ": No space left on device")
                        && e.getMessage().contains("still to be written by other models"), "the second refused: " + e.getMessage());
                assertEquals(usable - left, RoomLedger.outstanding(dir), "the first model's claim given back");
            }
            assertEquals(0, RoomLedger.outstanding(dir));
            Thread.sleep(100);
            assertEquals(before, workers(), "no workers started");
        }
    }

    @Test
    void aMixedMergeWithoutRoomIsRefusedBeforeItsWorkersStartAndOneWithRoomGivesItsClaimBack() throws Exception {
        assumeTrue(Files.getFileStore(dir).getTotalSpace() > 0, "a file system that keeps a count of its room");
        long before = workers();
        Path out = dir.resolve("merged");
        // another model this process is writing there still needs more than the file system has
        try (RoomLedger.Claim other = RoomLedger.claim(dir, "other", "the merged model", Files.getFileStore(dir).getUsableSpace() + (1L << 30), false)) {
            for (int i = 0; i < 3; i++) {
                IOException e = assertThrows(IOException.class, () -> merge(out, WriteMode.MIXED));
                assertTrue(e.getMessage().contains("No space left on device: the merged model needs"), e.getMessage());
                assertFalse(Files.exists(out));
            }
            Thread.sleep(100);
            assertEquals(before, workers(), "no worker threads left by refused merges");
        }
        assertEquals(0, RoomLedger.outstanding(dir));
        MergeReport r = merge(out, WriteMode.MIXED);
        assertTrue(r.bytesWritten > 0 && Files.isDirectory(out), "written");
        assertEquals(0, RoomLedger.outstanding(dir), "the merge's claim is given back");
    }
}
