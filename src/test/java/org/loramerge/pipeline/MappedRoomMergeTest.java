package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.RoomLedger;
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
