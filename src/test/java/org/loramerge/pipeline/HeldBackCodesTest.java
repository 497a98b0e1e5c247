package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.plan.TensorSource;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * A requantization may hold a weight's codes back until its last block and give them with its
 * scales ({@link Requantization.Result#codes}), as the GPU engine does for an FP8 weight with one
 * scale for the whole tensor: the pipeline must write them where the codes belong. An engine that
 * holds back the CPU engine's codes writes the CPU engine's files, byte for byte.
 */
class HeldBackCodesTest {
    @TempDir
    Path dir;

    @ParameterizedTest
    @ValueSource(strings = {"fp8/fine_grained_tensor", "fp8/fine_grained_128", "gptq_fp8/awq_gemm_4bit_g32"})
    void codesGivenWithTheScalesAreWrittenWhereMergeRowsWouldHaveWrittenThem(String fixture) throws Exception {
        Path caseDir = Path.of("src/test/resources", fixture);
        Path base = caseDir.resolve("base");
        Path adapter = caseDir.resolve("adapter");
        // small row blocks, so that a weight of 128x128 blocks is requantized in several
        MergeRunner.Options options = new MergeRunner.Options(false, 1 << 15);
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
            MergePlan plan = Planner.plan(c, a, PlanOptions.defaults().withTarget(QuantTarget.FP8));
            MergeReport plain;
            MergeReport held;
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(dir.resolve("plain"), false, List.of(base, adapter))) {
                plain = MergeRunner.run(plan, cpu, o, options, Progress.silent());
            }
            try (HoldingBackend b = new HoldingBackend(new CpuBackend(2));
                 AtomicOutput o = AtomicOutput.create(dir.resolve("held"), false, List.of(base, adapter))) {
                held = MergeRunner.run(plan, b, o, options, Progress.silent());
            }
            try (Stream<Path> files = Files.list(dir.resolve("plain"))) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(dir.resolve("held").resolve(p.getFileName())), fixture + ": " + p.getFileName());
                }
            }
            assertEquals(plain.requantization.codesChanged, held.requantization.codesChanged);
        }
    }

    /** The CPU engine, whose requantizations hold every code back until {@link Requantization#finish}. */
    private static final class HoldingBackend implements Backend {
        private final CpuBackend cpu;

        HoldingBackend(CpuBackend cpu) {
            this.cpu = cpu;
        }

        @Override
        public String describe() {
            return "CPU engine holding requantized codes back";
        }

        @Override
        public int parallelism() {
            return cpu.parallelism();
        }

        @Override
        public TensorMerge openMerge(TensorJob job) {
            return cpu.openMerge(job);
        }

        @Override
        public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws Exception {
            return cpu.openDelta(name, base, tuned, rows, cols);
        }

        @Override
        public WeightDelta openCombination(DenseCombination dense, int rows, int cols) {
            return cpu.openCombination(dense, rows, cols);
        }

        @Override
        public Requantization openRequantization(TensorJob job) {
            Requantization inner = cpu.openRequantization(job);
            byte[] codes = new byte[Math.toIntExact((long) job.rows() * job.cols())]; // FP8: a byte a code
            return new Requantization() {
                @Override
                public TensorSource.Form input() {
                    return inner.input();
                }

                @Override
                public int blockElements() {
                    return inner.blockElements();
                }

                @Override
                public int workingBytesPerElement() {
                    return inner.workingBytesPerElement();
                }

                @Override
                public long codesOffset(long firstElement) {
                    return inner.codesOffset(firstElement);
                }

                @Override
                public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
                    ByteBuffer b = inner.mergeRows(row0, rowCount, src, stats);
                    b.get(codes, Math.toIntExact(inner.codesOffset(row0 * job.cols())), b.remaining());
                    return ByteBuffer.allocate(0);
                }

                @Override
                public Result finish() throws Exception {
                    Result r = inner.finish();
                    return new Result(ByteBuffer.wrap(codes), r.tail(), r.measures());
                }

                @Override
                public void close() {
                    inner.close();
                }
            };
        }

        @Override
        public void close() {
            cpu.close();
        }
    }
}
