package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A merge that writes several shards at once: when one of them fails the others are closed and
 * nothing is committed, and a shard finished in the background does not keep its file open while
 * the other shards go on.
 */
class ShardsAtOnceFailureTest {
    private static final Path FIXTURES = Path.of("src/test/resources/fixtures");

    @TempDir
    Path dir;

    /** The CPU engine, except that the merge of {@code failing} fails in its rows. */
    private final class Watched extends ForwardingBackend {
        final String failing;

        Watched(String failing) {
            super(3);
            this.failing = failing;
        }

        @Override
        public TensorMerge openMerge(TensorJob job) throws Exception {
            boolean fails = job.out().name().equals(failing);
            return new ForwardingMerge(cpu.openMerge(job)) {
                @Override
                public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) throws Exception {
                    if (fails) {
                        throw new IOException("injected failure merging " + failing);
                    }
                    m.mergeRows(row0, rowCount, src, dst, stats);
                }
            };
        }
    }

    /** File descriptors of this process open on safetensors files under {@code folder} (Linux; the output's lock record left out). */
    private static int openFilesUnder(Path folder) throws IOException {
        int n = 0;
        try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
            for (Path fd : fds.toList()) {
                try {
                    Path target = Files.readSymbolicLink(fd);
                    if (target.startsWith(folder) && target.getFileName().toString().endsWith(".safetensors")) {
                        n++;
                    }
                } catch (IOException gone) {
                    // closed meanwhile
                }
            }
        }
        return n;
    }

    private static MergePlan plan(Checkpoint base, LoraAdapter adapter) throws Exception {
        MergePlan p = Planner.plan(base, adapter, new PlanOptions(null, 6_000));
        assertTrue(p.shards().size() >= 4, "several shards: " + p.shards().size());
        return p;
    }

    @Test
    void aShardFailingWhileOthersAreOpenCommitsNothingAndLeavesNoFileOpen() throws Exception {
        Path c = FIXTURES.resolve("sharded_bf16");
        Path out = dir.resolve("work").resolve("merged");
        Files.createDirectories(out.getParent());
        try (Checkpoint b = Checkpoint.open(c.resolve("base")); LoraAdapter a = LoraAdapter.open(c.resolve("adapter"))) {
            MergePlan p = plan(b, a);
            List<OutputTensor> last = p.shards().get(p.shards().size() - 1).tensors();
            String failing = null;
            for (OutputTensor t : last) {
                if (t.kind() == OutputTensor.Kind.MERGE && failing == null) {
                    failing = t.name();
                }
            }
            assertTrue(failing != null, "a merged weight in the last shard");
            Watched engine = new Watched(failing);
            try (engine; AtomicOutput o = AtomicOutput.create(out, false, List.of(c.resolve("base"), c.resolve("adapter")))) {
                IOException e = assertThrows(IOException.class,
                        () -> MergeRunner.run(p, engine, o, new MergeRunner.Options(false, 4096, 0, 2, WriteMode.POSITIONAL, false, 8), Progress.silent()));
                assertTrue(e.getMessage().contains(failing), e.getMessage());
                assertEquals(0, openFilesUnder(out.getParent()), "every shard's file closed once the merge has failed");
            }
            assertFalse(Files.exists(out), "nothing committed");
            List<String> left = new ArrayList<>();
            try (Stream<Path> s = Files.list(out.getParent())) {
                s.forEach(f -> left.add(f.getFileName().toString()));
            }
            assertEquals(List.of(), left, "nothing left behind");
        }
    }

    @Test
    void aShardFinishedInTheBackgroundNoLongerHoldsItsFileOpen() throws Exception {
        // a merge keeps a few shards open at once, but a model of hundreds of shards must not hold every
        // finished one's file until the last is written
        Path out = dir.resolve("work").resolve("model");
        Files.createDirectories(out.getParent());
        try (AtomicOutput o = AtomicOutput.create(out, false, List.of()); CheckpointWriter w = new CheckpointWriter(o, Progress.silent())) {
            CheckpointWriter.Shard first = w.openShard("model-00001-of-00002.safetensors", List.of(new SafetensorsWriter.Entry("a", DType.F32, new long[] {4})));
            CheckpointWriter.Shard second = w.openShard("model-00002-of-00002.safetensors", List.of(new SafetensorsWriter.Entry("b", DType.F32, new long[] {4})));
            assertEquals(2, openFilesUnder(out.getParent()));
            first.write(ByteBuffer.allocate(16));
            w.finishLater(first).get(10, TimeUnit.SECONDS);
            assertEquals(1, openFilesUnder(out.getParent()), "the finished shard's file closed, the other still open");
            second.write(ByteBuffer.allocate(16));
            w.finishLater(second).get(10, TimeUnit.SECONDS);
            assertEquals(0, openFilesUnder(out.getParent()));
            first.close(); // closing again, as a failed merge does with every shard it opened, is harmless
        }
    }
}
