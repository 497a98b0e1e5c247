package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Stages;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.WriteMode;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.DoraSpec;
import org.loramerge.plan.Layout;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TermSpec;
import org.loramerge.plan.UnmergeException;
import org.loramerge.plan.UnmergePlanner;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The CUDA engine must write exactly the CPU engine's bytes. Skips itself where there is no usable GPU. */
@Tag("gpu")
class CudaBackendTest extends OnTheGpu {
    @TempDir
    Path dir;

    static Stream<Arguments> shapes() {
        return Stream.of(
                Arguments.of(Layout.LINEAR, DType.BF16, 4096, 4096, 16),
                Arguments.of(Layout.LINEAR, DType.BF16, 257, 1000, 1),
                Arguments.of(Layout.LINEAR, DType.F16, 333, 771, 7),
                Arguments.of(Layout.LINEAR, DType.F32, 129, 255, 64),
                Arguments.of(Layout.LINEAR, DType.BF16, 640, 512, 256),
                Arguments.of(Layout.CONV1D, DType.BF16, 300, 900, 8),
                Arguments.of(Layout.EMBEDDING, DType.BF16, 32000, 64, 16),
                Arguments.of(Layout.EMBEDDING, DType.F16, 5000, 96, 4),
                Arguments.of(Layout.LINEAR, DType.F32, 1024, 1024, 32));
    }

    @ParameterizedTest(name = "{0} {1} {2}x{3} r{4}")
    @MethodSource("shapes")
    void gpuBlocksEqualCpuBlocks(Layout layout, DType dtype, int rows, int cols, int rank) throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 131L + cols + rank);
        long[] aShape = layout == Layout.LINEAR ? new long[] {rank, cols} : new long[] {rank, rows};
        long[] bShape = layout == Layout.LINEAR ? new long[] {rows, rank} : new long[] {cols, rank};
        TensorFiles files = new TensorFiles()
                .add("w", dtype, new long[] {rows, cols}, gaussian(rnd, rows * cols, 0.02))
                .add("a", DType.F32, aShape, gaussian(rnd, (int) (aShape[0] * aShape[1]), 0.05))
                .add("b", DType.F32, bShape, gaussian(rnd, (int) (bShape[0] * bShape[1]), 0.02));
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            TermSpec term = new TermSpec("x", layout, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 16.0 / rank);
            OutputTensor out = OutputTensor.merge("w", dtype, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), null, null));
            TensorJob job = TensorJob.prepare(out);
            assertEquals(true, CudaBackend.onGpu(job));
            int rowBytes = cols * dtype.sizeInBytes();
            int rowsPerBlock = Math.max(1, Math.min(rows, (Backend.DEFAULT_BLOCK_BYTES / rowBytes) / 3)); // several blocks, odd sizes
            try (CpuBackend cpu = new CpuBackend(1); TensorMerge onCpu = cpu.openMerge(job); TensorMerge onGpu = cuda.openMerge(job)) {
                assertEquals(CudaTensorMerge.class, onGpu.getClass());
                for (long r0 = 0; r0 < rows; r0 += rowsPerBlock) {
                    int n = (int) Math.min(rowsPerBlock, rows - r0);
                    try (MappedRegion src = f.map(f.tensor("w"), r0 * rowBytes, (long) n * rowBytes)) {
                        ByteBuffer expected = ByteBuffer.allocateDirect(n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        ByteBuffer got = ByteBuffer.allocateDirect(n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        onCpu.mergeRows(r0, n, src.bytes(), expected, new BlockStats());
                        onGpu.mergeRows(r0, n, src.bytes(), got, new BlockStats());
                        assertEquals(expected.position(0).limit(n * rowBytes), got.position(0).limit(n * rowBytes),
                                "rows " + r0 + ".." + (r0 + n) + " differ between GPU and CPU");
                    }
                }
            }
        }
    }

    @Test
    void gpuBlocksReportTheirStagingUploadComputeAndDownloadWithTheirBytes() throws Exception {
        int rows = 4096;
        int cols = 1024;
        int rank = 16;
        SplittableRandom rnd = new SplittableRandom(7);
        TensorFiles files = new TensorFiles()
                .add("w", DType.BF16, new long[] {rows, cols}, gaussian(rnd, rows * cols, 0.02))
                .add("a", DType.F32, new long[] {rank, cols}, gaussian(rnd, rank * cols, 0.05))
                .add("b", DType.F32, new long[] {rows, rank}, gaussian(rnd, rows * rank, 0.02));
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 2.0);
            OutputTensor out = OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), null, null));
            TensorJob job = TensorJob.prepare(out);
            int rowBytes = cols * 2;
            int rowsPerBlock = 1000; // 5 blocks, the last one short
            Stages stages = new Stages();
            try (TensorMerge onGpu = cuda.openMerge(job)) {
                for (long r0 = 0; r0 < rows; r0 += rowsPerBlock) {
                    int n = (int) Math.min(rowsPerBlock, rows - r0);
                    try (MappedRegion src = f.map(f.tensor("w"), r0 * rowBytes, (long) n * rowBytes)) {
                        ByteBuffer got = ByteBuffer.allocateDirect(n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        onGpu.mergeRows(r0, n, src.bytes(), got, new BlockStats(stages));
                    }
                }
            }
            Map<String, Stages.Total> t = stages.totals();
            long bytes = (long) rows * rowBytes;
            for (String stage : List.of("stage_in", "upload", "download")) {
                assertEquals(bytes, t.get(stage).bytes(), stage + " bytes: " + t);
                assertEquals(5, t.get(stage).events(), stage + " events: " + t);
            }
            assertEquals("device", t.get("upload").clock());
            assertEquals("threads", t.get("device_wait").clock());
            assertTrue(t.get("upload").seconds() > 0 && t.get("compute").seconds() > 0 && t.get("download").seconds() > 0, t.toString());
            // PCIe moves no more than a few hundred GB/s: device times that are not a few microseconds per 2 MB would be misread events
            assertTrue(t.get("upload").seconds() > bytes / 500e9, t.toString());
        }
    }

    @Test
    void goldenFixturesMergedOnTheGpuWithMappedWritesPositionalReadsAndSmallBlocksEqualTheCpuMerge() throws Exception {
        for (String name : fixtures().toList()) {
            Path caseDir = Path.of("src/test/resources/fixtures", name);
            try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
                MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
                Path cpuOut = dir.resolve(name + "-cpu");
                Path gpuOut = dir.resolve(name + "-gpu");
                try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                    MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
                }
                try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                    MergeRunner.run(plan, cuda, o, new MergeRunner.Options(false, 4096, 0, 1, WriteMode.MAPPED, true), Progress.silent());
                }
                try (Stream<Path> files = Files.list(cpuOut)) {
                    for (Path p : files.toList()) {
                        assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                    }
                }
            }
        }
    }

    static Stream<String> fixtures() throws Exception {
        try (Stream<Path> s = Files.list(Path.of("src/test/resources/fixtures"))) {
            return s.filter(p -> Files.exists(p.resolve("case.json"))).map(p -> p.getFileName().toString()).sorted().toList().stream();
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("fixtures")
    void goldenFixtureOutputsAreByteIdentical(String name) throws Exception {
        Path caseDir = Path.of("src/test/resources/fixtures", name);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, adapter, PlanOptions.defaults());
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, cuda, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                }
            }
        }
    }

    /**
     * The golden cases whose merge can be undone from the merged model alone (no DoRA, no replaced
     * tensors): the others are refused by the planner before any engine runs (UnmergeCliTest).
     */
    static Stream<String> undoableFixtures() throws Exception {
        List<String> undoable = new java.util.ArrayList<>();
        for (String name : fixtures().toList()) {
            Path caseDir = Path.of("src/test/resources/fixtures", name);
            try (Checkpoint merged = Checkpoint.open(caseDir.resolve("peft")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
                UnmergePlanner.plan(merged, adapter, null, PlanOptions.defaults());
                undoable.add(name);
            } catch (UnmergeException e) {
                // cannot be undone without its base
            }
        }
        return undoable.stream();
    }

    /** unmerge runs on the merge engines with negated terms: the GPU's bytes are the CPU's, for every golden case that can be undone. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("undoableFixtures")
    void goldenFixtureUnmergesAreByteIdentical(String name) throws Exception {
        Path caseDir = Path.of("src/test/resources/fixtures", name);
        try (Checkpoint merged = Checkpoint.open(caseDir.resolve("peft")); LoraAdapter adapter = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = UnmergePlanner.plan(merged, adapter, null, PlanOptions.defaults());
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, cpu, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(caseDir))) {
                MergeRunner.run(plan, cuda, o, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                }
            }
        }
    }

    /**
     * Factors that are exactly bf16 values (what bf16 training saves) put many merged values exactly
     * on rounding midpoints: the device settles them exactly, with the CPU engine's bytes, and none
     * needs decimal arithmetic; the same when the merge also converts the dtype (--dtype).
     */
    @ParameterizedTest(name = "{0} -> {1}")
    @MethodSource("tieDtypes")
    void bf16RepresentableFactorsAreSettledOnTheDeviceWithTheCpuBytes(DType dtype, DType outType) throws Exception {
        int rows = 768;
        int cols = 512;
        int rank = 16;
        SplittableRandom rnd = new SplittableRandom(7 + dtype.ordinal());
        double[] w = gaussian(rnd, rows * cols, 0.02);
        double[] a = gaussian(rnd, rank * cols, 0.02);
        double[] b = gaussian(rnd, rows * rank, 0.02);
        for (double[] v : new double[][] {w, a, b}) {
            for (int i = 0; i < v.length; i++) {
                v[i] = FloatFormat.BF16.round(v[i]);
            }
        }
        TensorFiles files = new TensorFiles()
                .add("w", dtype, new long[] {rows, cols}, w)
                .add("a", DType.F32, new long[] {rank, cols}, a)
                .add("b", DType.F32, new long[] {rows, rank}, b);
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 2.0);
            OutputTensor out = OutputTensor.merge("w", outType, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), null, null));
            TensorJob job = TensorJob.prepare(out);
            assertTrue(CudaBackend.onGpu(job), "a single-term merge goes to the GPU, converted or not");
            int rowBytes = cols * dtype.sizeInBytes();
            int outRowBytes = cols * outType.sizeInBytes();
            ByteBuffer expected = ByteBuffer.allocateDirect(rows * outRowBytes).order(ByteOrder.LITTLE_ENDIAN);
            ByteBuffer got = cuda.allocateBlockBuffer(rows * outRowBytes);
            BlockStats onCpuStats = new BlockStats();
            BlockStats onGpuStats = new BlockStats();
            try (CpuBackend cpu = new CpuBackend(1); TensorMerge onCpu = cpu.openMerge(job); TensorMerge onGpu = cuda.openMerge(job);
                 MappedRegion src = f.map(f.tensor("w"), 0, (long) rows * rowBytes)) {
                onCpu.mergeRows(0, rows, src.bytes(), expected, onCpuStats);
                onGpu.mergeRows(0, rows, src.bytes(), got, onGpuStats);
            }
            assertEquals(expected.position(0).limit(rows * outRowBytes), got.position(0).limit(rows * outRowBytes), "GPU and CPU bytes differ");
            // the two engines' bounds differ in detail, so they may call a few different elements ambiguous; each settles its own exactly
            assertTrue(onCpuStats.exactlyRounded() >= 10, "the case must put values on rounding midpoints; got " + onCpuStats.exactlyRounded());
            assertTrue(onGpuStats.exactlyRounded() >= 10, "settled exactly on the device; got " + onGpuStats.exactlyRounded());
            assertEquals(0, onGpuStats.exactFallbacks(), "no decimal arithmetic");
        }
    }

    /** DoRA with one norm per output row runs on the device and writes the CPU engine's bytes, converted or not. */
    @ParameterizedTest(name = "{0} -> {1}")
    @MethodSource("tieDtypes")
    void doraRowNormsOnTheGpuEqualTheCpu(DType dtype, DType outType) throws Exception {
        int rows = 301;
        int cols = 700;
        int rank = 8;
        SplittableRandom rnd = new SplittableRandom(99 + dtype.ordinal() * 3 + outType.ordinal());
        TensorFiles files = new TensorFiles()
                .add("w", dtype, new long[] {rows, cols}, gaussian(rnd, rows * cols, 0.02))
                .add("a", DType.F32, new long[] {rank, cols}, gaussian(rnd, rank * cols, 0.05))
                .add("b", DType.F32, new long[] {rows, rank}, gaussian(rnd, rows * rank, 0.02))
                .add("m", DType.F32, new long[] {rows}, gaussian(rnd, rows, 1.0));
        try (SafetensorsFile f = files.write(dir.resolve("d.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 2.0);
            DoraSpec dora = new DoraSpec(DoraSpec.Axis.ROW, TensorFiles.source(f, "m"));
            OutputTensor out = OutputTensor.merge("w", outType, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), dora, null));
            TensorJob job = TensorJob.prepare(out);
            assertTrue(CudaBackend.onGpu(job), "row-norm DoRA goes to the GPU");
            int rowBytes = cols * dtype.sizeInBytes();
            int outRowBytes = cols * outType.sizeInBytes();
            int rowsPerBlock = 77; // several blocks, the last one short
            try (CpuBackend cpu = new CpuBackend(1); TensorMerge onCpu = cpu.openMerge(job); TensorMerge onGpu = cuda.openMerge(job)) {
                for (long r0 = 0; r0 < rows; r0 += rowsPerBlock) {
                    int n = (int) Math.min(rowsPerBlock, rows - r0);
                    try (MappedRegion src = f.map(f.tensor("w"), r0 * rowBytes, (long) n * rowBytes)) {
                        ByteBuffer expected = ByteBuffer.allocateDirect(n * outRowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        ByteBuffer got = ByteBuffer.allocateDirect(n * outRowBytes).order(ByteOrder.LITTLE_ENDIAN);
                        onCpu.mergeRows(r0, n, src.bytes(), expected, new BlockStats());
                        onGpu.mergeRows(r0, n, src.bytes(), got, new BlockStats());
                        assertEquals(expected.position(0).limit(n * outRowBytes), got.position(0).limit(n * outRowBytes),
                                "rows " + r0 + ".." + (r0 + n) + " differ between GPU and CPU");
                    }
                }
            }
        }
    }

    static Stream<Arguments> tieDtypes() {
        return Stream.of(Arguments.of(DType.BF16, DType.BF16), Arguments.of(DType.F16, DType.F16), Arguments.of(DType.F32, DType.F32),
                Arguments.of(DType.BF16, DType.F16), Arguments.of(DType.BF16, DType.F32), Arguments.of(DType.F16, DType.BF16),
                Arguments.of(DType.F32, DType.BF16), Arguments.of(DType.F32, DType.F16));
    }

    static double[] gaussian(SplittableRandom rnd, int n, double std) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = std * Math.sqrt(-2 * Math.log(1 - rnd.nextDouble())) * Math.cos(2 * Math.PI * rnd.nextDouble());
        }
        return v;
    }
}
