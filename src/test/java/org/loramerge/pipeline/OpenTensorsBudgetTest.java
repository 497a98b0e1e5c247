package org.loramerge.pipeline;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.cli.Main;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The tensors a merge has open at once (their factors in doubles, a requantized weight's codes) stay
 * within what the workers' blocks leave of the JVM's memory, however many shards are written at once
 * and so however wide the window of blocks; a tensor is never kept waiting for good, and the bytes
 * written are those of a merge with memory to spare.
 */
class OpenTensorsBudgetTest {
    private static final Path FIXTURES = Path.of("src/test/resources/fixtures");
    private static final int THREADS = 3;
    private static final int BLOCK = 4096;

    @TempDir
    Path dir;

    /** A merge in a JVM that may use {@code maxMemory}, its tensors written 64 shards at once. */
    private WatchedEngine merge(Path base, Path adapter, PlanOptions planOptions, Path out, long maxMemory) throws Exception {
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter); WatchedEngine engine = new WatchedEngine(THREADS, false);
             AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
            MergePlan p = Planner.plan(b, a, planOptions);
            assertTrue(p.shards().size() >= 3, "several shards written at once: " + p.shards().size());
            MergeRunner.run(p, engine, o, new MergeRunner.Options(false, BLOCK, 0, 2, WriteMode.POSITIONAL, false, 64), Progress.silent(), maxMemory);
            return engine;
        }
    }

    /** The largest {@link TensorJob#heapBytes} of the plan's tensors. */
    private static long largestJob(Path base, Path adapter, PlanOptions planOptions) throws Exception {
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            long most = 0;
            for (OutputTensor t : Planner.plan(b, a, planOptions).tensors()) {
                if (!t.isByteCopy()) {
                    most = Math.max(most, TensorJob.heapBytes(t));
                }
            }
            return most;
        }
    }

    private static long smallestJob(Path base, Path adapter, PlanOptions planOptions) throws Exception {
        try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            long least = Long.MAX_VALUE;
            for (OutputTensor t : Planner.plan(b, a, planOptions).tensors()) {
                if (!t.isByteCopy()) {
                    least = Math.min(least, TensorJob.heapBytes(t));
                }
            }
            return least;
        }
    }

    @Test
    void manyThreadsWhoseBlocksFillTheHeapStillLeaveTheTensorsABudget() {
        // 64 threads of 8 MiB blocks at the launcher's 2 GB heap: the blocks' estimate is the whole heap
        long heap = 2L << 30;
        int threads = MergeContext.threadsFor(64, 8 << 20, heap);
        assertEquals(heap / 16, MergeContext.jobBudget(threads, 8 << 20, heap));
    }

    /** The JVM memory whose job budget is {@code budget} with this test's threads and blocks. */
    private static long maxMemoryFor(long budget) {
        long blocks = (long) THREADS * MergeContext.MEMORY_PER_THREAD * BLOCK;
        long maxMemory = blocks + 2 * budget;
        assertEquals(THREADS, MergeContext.threadsFor(THREADS, BLOCK, maxMemory), "every thread fits");
        assertEquals(budget, MergeContext.jobBudget(THREADS, BLOCK, maxMemory));
        return maxMemory;
    }

    private void assertHeldWithinBudget(Path base, Path adapter, PlanOptions planOptions) throws Exception {
        long budget = 2 * largestJob(base, adapter, planOptions);
        WatchedEngine spare = merge(base, adapter, planOptions, dir.resolve("spare"), 1L << 40);
        assertTrue(spare.mostHeldBytesWithOthers() > budget,
                "with memory to spare, the open tensors hold more than the small budget: " + spare.mostHeldBytesWithOthers() + " > " + budget);
        WatchedEngine tight = merge(base, adapter, planOptions, dir.resolve("tight"), maxMemoryFor(budget));
        assertTrue(tight.mostHeldBytesWithOthers() <= budget,
                "tensors open together hold at most the budget: " + tight.mostHeldBytesWithOthers() + " > " + budget);
        assertTrue(tight.mostOpen() >= 2, "two tensors fit the budget, so shards still take turns: " + tight.mostOpen());
        SameFiles.assertSameFiles(dir.resolve("spare"), dir.resolve("tight"));
    }

    @Test
    void tensorsOpenAtOnceHoldNoMoreThanTheBudgetAndWriteTheSameBytes() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        assertHeldWithinBudget(c.resolve("base"), c.resolve("adapter"), new PlanOptions(null, 6_000));
    }

    @Test
    void requantizedWeightsCountTheirCodesWithinTheBudget() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        Path nf4 = dir.resolve("nf4-base");
        assertEquals(0, Main.run("quantize", "--base", c.resolve("base").toString(), "--out", nf4.toString(), "--double-quant", "--quiet"));
        assertHeldWithinBudget(nf4, c.resolve("adapter"), new PlanOptions(null, 5_000).withTarget(QuantTarget.NF4));
    }

    @Test
    void aTensorLargerThanTheBudgetIsMergedAloneAndTheMergeFinishes() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        PlanOptions planOptions = new PlanOptions(null, 6_000);
        merge(c.resolve("base"), c.resolve("adapter"), planOptions, dir.resolve("spare"), 1L << 40);
        // blocks that fill the heap: the budget is its floor, a sixteenth of the heap, below every job here
        long maxMemory = (long) THREADS * MergeContext.MEMORY_PER_THREAD * BLOCK;
        assertEquals(THREADS, MergeContext.threadsFor(THREADS, BLOCK, maxMemory), "every thread fits");
        assertTrue(MergeContext.jobBudget(THREADS, BLOCK, maxMemory) < smallestJob(c.resolve("base"), c.resolve("adapter"), planOptions));
        WatchedEngine none = merge(c.resolve("base"), c.resolve("adapter"), planOptions, dir.resolve("none"), maxMemory);
        assertEquals(1, none.mostOpen(), "with no room beside the blocks, one tensor at a time");
        SameFiles.assertSameFiles(dir.resolve("spare"), dir.resolve("none"));
    }

    @Test
    void aJobHoldsWhatItsEstimateSaysBeforeItIsLoaded() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        try (Checkpoint b = Checkpoint.open(c.resolve("base")); LoraAdapter a = LoraAdapter.open(c.resolve("adapter"))) {
            int merged = 0;
            for (OutputTensor t : Planner.plan(b, a, new PlanOptions(null, 6_000)).tensors()) {
                if (t.terms().isEmpty()) {
                    continue;
                }
                TensorJob job = TensorJob.prepare(t);
                long held = 0;
                for (LowRankTerm term : job.terms()) {
                    held += (long) Double.BYTES * (term.u().length + term.vt().length + term.uNorms().length + term.vNorms().length);
                }
                assertEquals(held, TensorJob.heapBytes(t), t.name());
                merged++;
            }
            assertTrue(merged > 2, "several merged weights: " + merged);
        }
    }
}
