package org.loramerge.pipeline;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.cli.Main;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A merge writes several shards at once, their tensors interleaved so the open files fill at the
 * same pace ({@link ShardOrder}): the order says when bytes are written, never which, so the
 * output and the report are those of writing the shards one after the other.
 */
class ShardInterleavingTest {
    private static final Path FIXTURES = Path.of("src/test/resources/fixtures");

    @TempDir
    Path dir;

    @Test
    void oneLaneIsPlanOrder() {
        long[][] sizes = {{5, 5}, {1}, {2, 2, 2}};
        List<ShardOrder.Step> steps = ShardOrder.of(sizes, 1);
        assertEquals(List.of(new ShardOrder.Step(0, 0, true, false, 0), new ShardOrder.Step(0, 1, false, true, 0), new ShardOrder.Step(1, 0, true, true, 0),
                new ShardOrder.Step(2, 0, true, false, 0), new ShardOrder.Step(2, 1, false, false, 0), new ShardOrder.Step(2, 2, false, true, 0)), steps);
    }

    @Test
    void openShardsFillAtTheSamePaceEachInItsOwnOrder() {
        // shard 0 has one large tensor and one small, shard 1 four equal ones: by share of bytes, shard 1 goes on
        // until it has caught up with shard 0's first tensor
        long[][] sizes = {{60, 40}, {25, 25, 25, 25}};
        List<ShardOrder.Step> steps = ShardOrder.of(sizes, 2);
        assertEquals(List.of(new ShardOrder.Step(0, 0, true, false, 0), new ShardOrder.Step(1, 0, true, false, 1), new ShardOrder.Step(1, 1, false, false, 1),
                new ShardOrder.Step(1, 2, false, false, 1), new ShardOrder.Step(0, 1, false, true, 0), new ShardOrder.Step(1, 3, false, true, 1)), steps);
    }

    @Test
    void aShardOpenedLateTakesTurnsBesideTheOthersInsteadOfCatchingUpFirst() {
        // three shards, two lanes: shard 2 opens when shard 0 is done and shard 1 is three quarters through; by
        // share of bytes it would take the next three turns and leave shard 1's file idle, by bytes it starts level
        long[][] sizes = {{10, 10, 10, 10}, {10, 10, 10, 10}, {10, 10, 10, 10}};
        List<String> order = ShardOrder.of(sizes, 2).stream().map(s -> s.shard() + ":" + s.tensor()).toList();
        assertEquals(List.of("0:0", "1:0", "0:1", "1:1", "0:2", "1:2", "0:3", "1:3", "2:0", "2:1", "2:2", "2:3"), order);
        // with a lane for each, by share of bytes: they end together
        long[][] uneven = {{30, 30}, {20}, {10, 10, 10, 10, 10, 10}};
        List<String> paced = ShardOrder.of(uneven, 3).stream().map(s -> s.shard() + ":" + s.tensor()).toList();
        assertEquals(List.of("0:0", "1:0", "2:0", "2:1", "2:2", "0:1", "2:3", "2:4", "2:5"), paced);
    }

    @Test
    void aFinishedShardMakesRoomForTheNextAndEveryTensorComesOnce() {
        long[][] sizes = {{3}, {1, 1, 1, 1}, {}, {2, 2}, {7}};
        List<ShardOrder.Step> steps = ShardOrder.of(sizes, 2);
        int[] next = new int[sizes.length];
        List<Integer> opened = new ArrayList<>();
        int open = 0;
        int most = 0;
        Integer[] laneOf = new Integer[2];
        for (ShardOrder.Step s : steps) {
            if (s.first()) {
                opened.add(s.shard());
                open++;
                assertTrue(laneOf[s.lane()] == null, "shard " + s.shard() + " takes lane " + s.lane() + ", held by shard " + laneOf[s.lane()]);
                laneOf[s.lane()] = s.shard();
            }
            assertEquals(s.shard(), laneOf[s.lane()], "a shard keeps its lane");
            most = Math.max(most, open);
            if (s.tensor() >= 0) {
                assertEquals(next[s.shard()]++, s.tensor(), "shard " + s.shard() + "'s tensors in their order");
            }
            if (s.last()) {
                assertEquals(s.tensor() < 0 ? -1 : sizes[s.shard()].length - 1, s.tensor() < 0 ? -1 : s.tensor());
                open--;
                laneOf[s.lane()] = null;
            }
        }
        assertEquals(List.of(0, 1, 2, 3, 4), opened, "shards open in plan order, so the index lists them as before");
        assertTrue(most <= 2, "at most two open: " + most);
        for (int i = 0; i < sizes.length; i++) {
            assertEquals(sizes[i].length, next[i], "every tensor of shard " + i);
        }
        assertThrows(IllegalArgumentException.class, () -> ShardOrder.of(sizes, 0));
    }

    private MergeReport merge(Path base, Path adapter, Path out, PlanOptions plan, int shardsAtOnce) throws Exception {
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter); CpuBackend cpu = new CpuBackend(3);
             AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
            MergePlan p = Planner.plan(b, a, plan);
            assertTrue(p.shards().size() >= 3, "several shards to interleave: " + p.shards().size());
            return MergeRunner.run(p, cpu, o, new MergeRunner.Options(false, 4096, 0, 2, WriteMode.POSITIONAL, false, shardsAtOnce), Progress.silent());
        }
    }

    @Test
    void aMergeIntoManyShardsWritesTheSameBytesWhateverTheShardsAtOnce() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        PlanOptions small = new PlanOptions(null, 6_000);
        MergeReport one = merge(c.resolve("base"), c.resolve("adapter"), dir.resolve("one"), small, 1);
        for (int lanes : new int[] {2, 4, 64}) {
            MergeReport r = merge(c.resolve("base"), c.resolve("adapter"), dir.resolve("lanes" + lanes), small, lanes);
            SameFiles.assertSameFiles(dir.resolve("one"), dir.resolve("lanes" + lanes));
            assertEquals(one.bytesWritten, r.bytesWritten);
            assertEquals(one.tensors.stream().map(MergeReport.TensorOutcome::name).toList(),
                    r.tensors.stream().map(MergeReport.TensorOutcome::name).toList(), "the report lists tensors in plan order");
        }
    }

    @Test
    void aRequantizingMergeReportsSurvivalInPlanOrderWithTheSameSums() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        Path nf4 = dir.resolve("nf4-base");
        assertEquals(0, Main.run("quantize", "--base", c.resolve("base").toString(), "--out", nf4.toString(), "--double-quant", "--quiet"));
        PlanOptions small = new PlanOptions(null, 5_000).withTarget(QuantTarget.NF4);
        MergeReport one = merge(nf4, c.resolve("adapter"), dir.resolve("one"), small, 1);
        MergeReport four = merge(nf4, c.resolve("adapter"), dir.resolve("four"), small, 4);
        SameFiles.assertSameFiles(dir.resolve("one"), dir.resolve("four"));
        assertTrue(one.requantization.tensors.size() > 2, "several requantized weights");
        assertEquals(one.requantization.tensors.stream().map(MergeReport.Survival::name).toList(),
                four.requantization.tensors.stream().map(MergeReport.Survival::name).toList());
        assertEquals(one.requantization.deltaNorm, four.requantization.deltaNorm, "summed in the same order, to the bit");
        assertEquals(one.requantization.survivingNorm, four.requantization.survivingNorm);
        assertEquals(one.requantization.aligned, four.requantization.aligned);
    }
}
