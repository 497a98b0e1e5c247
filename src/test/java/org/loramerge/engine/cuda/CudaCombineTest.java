package org.loramerge.engine.cuda;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
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
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.DenseBoundaryCase;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * Several adapters on the GPU write exactly the CPU engine's bytes: a tensor with several
 * low-rank terms (cat, task_arithmetic) goes up as one term of the summed rank with the scales
 * folded in; the task-arithmetic family's selection passes and rows run on the device with the
 * CPU engine's cut and bytes; elements of W + Δ at a rounding boundary are settled from the exact
 * W + Δ; every golden combination case is byte for byte the CPU engine's, the {@code _svd}
 * methods too (merge keeps their SVD on the host). Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaCombineTest extends OnTheGpu {
    private static final Path COMBINE = Path.of("src/test/resources/combine");

    @TempDir
    Path dir;

    static Stream<Arguments> shapes() {
        return Stream.of(
                Arguments.of(Layout.LINEAR, DType.BF16, 4096, 4096, new int[] {16, 16, 16, 16}),
                Arguments.of(Layout.LINEAR, DType.F32, 257, 1000, new int[] {1, 8}),
                Arguments.of(Layout.LINEAR, DType.F16, 333, 771, new int[] {7, 3, 5}),
                Arguments.of(Layout.CONV1D, DType.BF16, 300, 900, new int[] {8, 4}),
                Arguments.of(Layout.EMBEDDING, DType.BF16, 32000, 64, new int[] {16, 8}));
    }

    @ParameterizedTest(name = "{0} {1} {2}x{3} ranks {4}")
    @MethodSource("shapes")
    void severalTermsOnTheGpuEqualTheCpuBlocks(Layout layout, DType dtype, int rows, int cols, int[] ranks) throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 131L + cols + ranks.length);
        TensorFiles files = new TensorFiles().add("w", dtype, new long[] {rows, cols}, CudaBackendTest.gaussian(rnd, rows * cols, 0.02));
        for (int t = 0; t < ranks.length; t++) {
            int r = ranks[t];
            long[] aShape = layout == Layout.LINEAR ? new long[] {r, cols} : new long[] {r, rows};
            long[] bShape = layout == Layout.LINEAR ? new long[] {rows, r} : new long[] {cols, r};
            files.add("a" + t, DType.F32, aShape, CudaBackendTest.gaussian(rnd, (int) (aShape[0] * aShape[1]), 0.05));
            files.add("b" + t, DType.F32, bShape, CudaBackendTest.gaussian(rnd, (int) (bShape[0] * bShape[1]), 0.02));
        }
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            List<TermSpec> terms = new ArrayList<>();
            double[] weights = {0.7, -0.3, 1.25, 0.1};
            for (int t = 0; t < ranks.length; t++) {
                // a weight folded into a non-power-of-two scale, as cat and task_arithmetic plan it
                terms.add(new TermSpec("x" + t, layout, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t), ranks[t],
                        weights[t] * (16.0 / 3 / ranks[t])));
            }
            OutputTensor out = OutputTensor.merge("w", dtype, TensorFiles.source(f, "w"), new OutputTensor.Update(terms, null, null));
            TensorJob job = TensorJob.prepare(out);
            assertEquals(true, CudaBackend.onGpu(job));
            int rowBytes = cols * dtype.sizeInBytes();
            int rowsPerBlock = Math.max(1, Math.min(rows, (Backend.DEFAULT_BLOCK_BYTES / rowBytes) / 3));
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

    static Stream<Arguments> denseShapes() {
        return Stream.of(
                Arguments.of(CombineMethod.TIES, DType.BF16, 4096, 4096, 4, 0.5),
                Arguments.of(CombineMethod.MAGNITUDE_PRUNE, DType.F32, 1000, 777, 3, 0.1),
                Arguments.of(CombineMethod.DARE_TIES, DType.BF16, 2048, 1024, 4, 0.3),
                Arguments.of(CombineMethod.DARE_LINEAR, DType.F16, 300, 513, 2, 0.7),
                Arguments.of(CombineMethod.TIES, DType.F32, 257, 4096, 8, 1.0));
    }

    /** The selection passes and the rows of a dense combination on one engine; returns the merged tensor's bytes. */
    private static ByteBuffer runDense(Backend engine, TensorJob job, SafetensorsFile f, int rows, int cols, DType dtype) throws Exception {
        int rowBytes = cols * dtype.sizeInBytes();
        int rowsPerBlock = Math.max(1, Math.min(rows, (Backend.DEFAULT_BLOCK_BYTES / rowBytes) / 3));
        ByteBuffer all = ByteBuffer.allocateDirect(rows * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
        try (TensorMerge m = engine.openMerge(job)) {
            while (job.needsSelection()) {
                for (long r0 = 0; r0 < rows; r0 += rowsPerBlock) {
                    m.countSelection(r0, (int) Math.min(rowsPerBlock, rows - r0));
                }
                m.finishSelectionPass();
                job.dense().finishPass();
            }
            for (long r0 = 0; r0 < rows; r0 += rowsPerBlock) {
                int n = (int) Math.min(rowsPerBlock, rows - r0);
                try (MappedRegion src = f.map(f.tensor("w"), r0 * rowBytes, (long) n * rowBytes)) {
                    ByteBuffer out = ByteBuffer.allocateDirect(n * rowBytes).order(ByteOrder.LITTLE_ENDIAN);
                    m.mergeRows(r0, n, src.bytes(), out, new BlockStats());
                    all.position((int) (r0 * rowBytes));
                    all.put(out.position(0).limit(n * rowBytes));
                }
            }
        }
        return all.position(0);
    }

    @ParameterizedTest(name = "{0} {1} {2}x{3} {4} adapters D={5}")
    @MethodSource("denseShapes")
    void theTaskArithmeticFamilyOnTheGpuEqualsTheCpuEngine(CombineMethod method, DType dtype, int rows, int cols, int parts, double density)
            throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 7L + cols + parts);
        TensorFiles files = new TensorFiles().add("w", dtype, new long[] {rows, cols}, CudaBackendTest.gaussian(rnd, rows * cols, 0.02));
        for (int t = 0; t < parts; t++) {
            files.add("a" + t, DType.F32, new long[] {16, cols}, CudaBackendTest.gaussian(rnd, 16 * cols, 0.05));
            files.add("b" + t, DType.F32, new long[] {rows, 16}, CudaBackendTest.gaussian(rnd, rows * 16, 0.02));
        }
        try (SafetensorsFile f = files.write(dir.resolve("t.safetensors"))) {
            List<Double> weights = new ArrayList<>();
            List<CombinedUpdate.Part> list = new ArrayList<>();
            for (int t = 0; t < parts; t++) {
                weights.add(t % 2 == 0 ? 0.6 : -0.25);
                list.add(new CombinedUpdate.Part(t, new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t),
                        16, 2.0), weights.get(t)));
            }
            Combination how = Combination.of(method, parts, weights, density, Combination.MajoritySign.TOTAL, 1.3, 5, 0, null);
            OutputTensor out = OutputTensor.merge("w", dtype, TensorFiles.source(f, "w"),
                    new OutputTensor.Update(List.of(), null, null, new CombinedUpdate(how, "w", "m", list)));
            TensorJob onCpu = TensorJob.prepare(out);
            TensorJob onGpu = TensorJob.prepare(out);
            assertEquals(true, CudaBackend.onGpu(onGpu));
            ByteBuffer expected;
            try (CpuBackend cpu = new CpuBackend(1)) {
                expected = runDense(cpu, onCpu, f, rows, cols, dtype);
            }
            ByteBuffer got = runDense(cuda, onGpu, f, rows, cols, dtype);
            for (int a = 0; a < parts; a++) {
                if (onCpu.dense().selection(a) != null) {
                    assertEquals(onCpu.dense().selection(a).keepFrom(), onGpu.dense().selection(a).keepFrom(), "the same cut for adapter " + a);
                }
            }
            assertEquals(expected, got, "the GPU's bytes are the CPU engine's");
        }
    }

    @Test
    void denseCombinationsNextToARoundingBoundaryRoundTheExactSumOfWAndDelta() throws Exception {
        try (SafetensorsFile f = DenseBoundaryCase.write(dir.resolve("t.safetensors"))) {
            TensorJob job = TensorJob.prepare(DenseBoundaryCase.output(f));
            int bytes = DenseBoundaryCase.ROWS * DenseBoundaryCase.COLS * 2;
            ByteBuffer out = cuda.allocateBlockBuffer(bytes);
            BlockStats stats = new BlockStats();
            try (TensorMerge m = cuda.openMerge(job); MappedRegion src = f.map(f.tensor("w"), 0, bytes)) {
                assertEquals(CudaDenseMerge.class, m.getClass());
                out.clear();
                m.mergeRows(0, DenseBoundaryCase.ROWS, src.bytes(), out, stats);
            }
            for (int e = 0; e < DenseBoundaryCase.EXPECTED.length; e++) {
                assertEquals(DenseBoundaryCase.EXPECTED[e], FloatFormat.BF16.decode(FloatFormat.BF16.bitsAt(out, e)), "element " + e + " of W + Δ");
            }
            assertEquals(6, stats.exactlyRounded(), "the six elements whose float64 sum is a midpoint, settled on the host");
        }
    }

    /** Every golden combination case as merge --combine runs it: the PEFT cases that merge takes, and the dense ones. */
    static Stream<Arguments> combinations() throws Exception {
        ObjectMapper json = new ObjectMapper();
        List<Arguments> out = new ArrayList<>();
        for (String kind : List.of("peft", "dense")) {
            try (Stream<Path> s = Files.list(COMBINE.resolve(kind))) {
                for (Path p : s.sorted().toList()) {
                    JsonNode c = json.readTree(p.resolve("case.json").toFile());
                    JsonNode o = kind.equals("peft") ? c.get("add_weighted_adapter") : c.get("options");
                    String method = kind.equals("peft") ? o.get("combination_type").asText() : o.get("method").asText();
                    CombineMethod m = CombineMethod.parse(method, CombineMethod.forMerge());
                    if (kind.equals("peft") && (m == null || m.family() != CombineMethod.Family.PEFT)) {
                        continue; // PEFT's factor-wise ties and the like: combine only
                    }
                    out.add(Arguments.of(kind + "/" + p.getFileName(), c, m, o));
                }
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("combinations")
    void combinedMergesAreByteIdenticalOnBothEngines(String name, JsonNode c, CombineMethod method, JsonNode o) throws Exception {
        List<Double> weights = new ArrayList<>();
        c.get("weights").forEach(w -> weights.add(w.asDouble()));
        Combination how = Combination.of(method, weights.size(), weights, o.path("density").asDouble(1.0),
                Combination.MajoritySign.valueOf(o.path(o.has("majority") ? "majority" : "majority_sign_method").asText("total")
                        .toUpperCase(Locale.ROOT)), o.path("lam").asDouble(1.0), o.path("seed").asLong(0), o.path("svd_rank").asInt(0),
                o.has("svd_clamp") ? o.get("svd_clamp").asDouble() : null);
        List<LoraAdapter> adapters = new ArrayList<>();
        try (Checkpoint base = Checkpoint.open(COMBINE.resolve("models").resolve(c.get("model").asText()))) {
            for (JsonNode a : c.get("adapters")) {
                adapters.add(LoraAdapter.open(COMBINE.resolve("adapters").resolve(a.asText())));
            }
            MergePlan plan = Planner.plan(base, adapters, PlanOptions.defaults(), how);
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput out = AtomicOutput.create(cpuOut, false, List.of(COMBINE))) {
                MergeRunner.run(plan, cpu, out, MergeRunner.Options.defaults(), Progress.silent());
            }
            try (AtomicOutput out = AtomicOutput.create(gpuOut, false, List.of(COMBINE))) {
                MergeRunner.run(Planner.plan(base, adapters, PlanOptions.defaults(), how), cuda, out, MergeRunner.Options.defaults(),
                        Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), name + ": " + p.getFileName());
                }
            }
        } finally {
            for (LoraAdapter a : adapters) {
                a.close();
            }
        }
    }
}
