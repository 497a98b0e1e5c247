package org.loramerge.engine.cuda;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import jcuda.CudaException;
import jcuda.runtime.JCuda;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.api.Adapters;
import org.loramerge.cli.Main;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.HostCombinedDelta;
import org.loramerge.engine.WeightDelta;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Svd;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.CombineReport;
import org.loramerge.pipeline.CombinedAdapterWriter;
import org.loramerge.plan.AdapterPlan;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The SVD of PEFT's {@code _svd} combinations on the GPU against the CPU engine, its twin: the
 * dense combination Δ formed on the device is the host's bit for bit (its top-D selection made
 * there, or, where the cut splits a run of equal magnitudes, on the host); on that Δ the singular
 * values agree to 1e-9 relative and the rank-R error has the same ratio to the Eckart–Young
 * optimum (at most 1.01); a combination of more adapters than the kernels hold is decomposed on
 * the host, and {@code combine} names the modules that were; {@code combine --device cuda} on the
 * golden SVD cases writes the CPU engine's adapter structure and config, svd's factors bit for bit
 * (its SVD is the host's on both engines) and the others' within the factors' float32 rounding
 * ({@code merge --combine} keeps the SVD on the host and writes the CPU engine's bytes:
 * {@link CudaCombineTest}). combine's Δ share the engine's ΔW budget: within a budget of one Δ at
 * a time the modules wait for room and the adapter is the unconstrained run's, byte for byte; a
 * device with no room left for a Δ reports itself out of memory (on which combine decomposes the
 * module on the host, {@code CombineOnAFullDeviceTest}), holds nothing of it, and serves the next
 * Δ once memory is free again. Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaCombineSvdTest {
    private static final Path COMBINE = Path.of("src/test/resources/combine");
    private static final int PARTS = 4;
    private static final int RANK = 16;
    private static CudaBackend cuda;

    @TempDir
    Path dir;

    @BeforeAll
    static void open() {
        cuda = GpuTests.openOrSkip();
    }

    @AfterAll
    static void close() {
        if (cuda != null) {
            cuda.close();
        }
    }

    /**
     * Four rank-16 adapters of a Linear [rows, cols] as one update of {@code method} at rank 16;
     * with {@code zeroRows}, the first adapter's B is zero on its first half of the rows, so its ΔW
     * holds a run of exact zeros that a cut keeping more than half of it splits.
     */
    private CombinedUpdate update(SafetensorsFile[] keep, CombineMethod method, int rows, int cols, double density, boolean zeroRows)
            throws Exception {
        SplittableRandom rnd = new SplittableRandom(rows * 31L + cols + method.ordinal());
        TensorFiles files = new TensorFiles();
        for (int t = 0; t < PARTS; t++) {
            double[] a = gaussian(rnd, RANK * cols, 0.05);
            double[] b = gaussian(rnd, rows * RANK, 0.02);
            if (zeroRows && t == 0) {
                Arrays.fill(b, 0, rows / 2 * RANK, 0.0);
            }
            files.add("a" + t, DType.F32, new long[] {RANK, cols}, a);
            files.add("b" + t, DType.F32, new long[] {rows, RANK}, b);
        }
        SafetensorsFile f = files.write(dir.resolve(method.cliName() + (zeroRows ? "-zeros" : "") + ".safetensors"));
        keep[0] = f;
        List<Double> weights = List.of(0.6, -0.25, 1.1, 0.4);
        List<CombinedUpdate.Part> parts = new ArrayList<>();
        for (int t = 0; t < PARTS; t++) {
            parts.add(new CombinedUpdate.Part(t, new TermSpec("m", Layout.LINEAR, TensorFiles.source(f, "a" + t), TensorFiles.source(f, "b" + t),
                    RANK, 2.0), weights.get(t)));
        }
        Combination how = Combination.of(method, PARTS, weights, density, Combination.MajoritySign.TOTAL, 1.0, 7, RANK, null);
        return new CombinedUpdate(how, "w", "m", parts);
    }

    private static double[] gaussian(SplittableRandom rnd, int n, double scale) {
        double[] v = new double[n];
        for (int i = 0; i < n; i += 2) {
            // Box–Muller from SplittableRandom, so the values do not depend on java.util.Random's state
            double u1 = 1.0 - rnd.nextDouble();
            double u2 = rnd.nextDouble();
            double r = Math.sqrt(-2 * Math.log(u1)) * scale;
            v[i] = r * Math.cos(2 * Math.PI * u2);
            if (i + 1 < n) {
                v[i + 1] = r * Math.sin(2 * Math.PI * u2);
            }
        }
        return v;
    }

    /** Δ of a host handle, row-major. */
    private static double[] hostValues(HostCombinedDelta d) throws Exception {
        double[] all = new double[d.rows() * d.cols()];
        d.forEachBlock((row0, n, values) -> System.arraycopy(values, 0, all, row0 * d.cols(), n * d.cols()));
        return all;
    }

    static Stream<Arguments> denseSvdMethods() {
        return Stream.of(
                Arguments.of(CombineMethod.TIES_SVD, 600, 450, 0.5, false),
                Arguments.of(CombineMethod.MAGNITUDE_PRUNE_SVD, 513, 257, 0.3, false),
                Arguments.of(CombineMethod.DARE_LINEAR_SVD, 300, 700, 0.7, false),
                Arguments.of(CombineMethod.DARE_TIES_SVD, 450, 600, 0.6, false),
                Arguments.of(CombineMethod.TIES_SVD, 400, 300, 1.0, false),
                // the cut inside the first adapter's run of zeros: Δ formed on the host, copied up, decomposed on the device
                Arguments.of(CombineMethod.MAGNITUDE_PRUNE_SVD, 400, 300, 0.8, true));
    }

    @ParameterizedTest(name = "{0} {1}x{2} D={3} zero rows {4}")
    @MethodSource("denseSvdMethods")
    void theGpuSvdOfACombinationMatchesTheCpuTwin(CombineMethod method, int rows, int cols, double density, boolean zeroRows) throws Exception {
        SafetensorsFile[] file = new SafetensorsFile[1];
        CombinedUpdate u = update(file, method, rows, cols, density, zeroRows);
        DenseCombination onGpu = DenseCombination.load(u, rows, cols);
        try (SafetensorsFile f = file[0];
             WeightDelta gpu = cuda.openCombination(onGpu, rows, cols);
             HostCombinedDelta cpu = HostCombinedDelta.open(DenseCombination.load(u, rows, cols), rows, cols)) {
            CudaWeightDelta onDevice = assertInstanceOf(CudaWeightDelta.class, gpu, "Δ is kept on the device");
            assertEquals("cuda:0", gpu.device());
            if (onGpu.selection(0) != null) {
                assertEquals(zeroRows, onGpu.selection(0).hasPartialTies(), "the first adapter's cut splits its run of zeros: " + zeroRows);
            }
            double[] exact = hostValues(cpu);
            assertArrayEquals(exact, onDevice.values().data(), "Δ on the device is the host's, bit for bit");
            assertEquals(cpu.deltaSquared(), gpu.deltaSquared(), 1e-12 * cpu.deltaSquared());

            RandomizedSvd.Options options = RandomizedSvd.Options.defaults(1);
            RandomizedSvd.Result c = cpu.svd(RANK, options);
            RandomizedSvd.Result g = gpu.svd(RANK, options);
            assertEquals(RANK, g.svd().rank());
            for (int i = 0; i < RANK; i++) {
                assertEquals(c.svd().sigma()[i], g.svd().sigma()[i], 1e-9 * c.svd().sigma()[i], "σ" + i);
            }
            double[] sigma = Svd.of(Matrix.wrap(rows, cols, exact)).sigma();
            double tail = 0;
            for (int i = RANK; i < sigma.length; i++) {
                tail += sigma[i] * sigma[i];
            }
            double optimal = Math.sqrt(tail / cpu.deltaSquared());
            double cpuRatio = c.relativeError(RANK) / optimal;
            double gpuRatio = g.relativeError(RANK) / optimal;
            assertTrue(gpuRatio <= 1.01, "the GPU's error is " + gpuRatio + " times the optimum");
            assertEquals(cpuRatio, gpuRatio, 1e-6, "the same ratio to the optimum on both engines");
        }
    }

    @Test
    void aCombinationOfMoreAdaptersThanTheKernelsHoldIsDecomposedOnTheHost() throws Exception {
        SafetensorsFile[] file = new SafetensorsFile[1];
        CombinedUpdate four = update(file, CombineMethod.TIES_SVD, 64, 48, 0.5, false);
        List<CombinedUpdate.Part> nine = new ArrayList<>();
        List<Double> weights = new ArrayList<>();
        for (int k = 0; k < DeviceCombination.MAX_PARTS + 1; k++) {
            CombinedUpdate.Part p = four.parts().get(k % PARTS);
            nine.add(new CombinedUpdate.Part(k, p.term(), p.weight()));
            weights.add(p.weight());
        }
        Combination how = Combination.of(CombineMethod.TIES_SVD, nine.size(), weights, 0.5, Combination.MajoritySign.TOTAL, 1.0, 7, RANK, null);
        CombinedUpdate u = new CombinedUpdate(how, "w", "m", nine);
        try (SafetensorsFile f = file[0]; WeightDelta d = cuda.openCombination(DenseCombination.load(u, 64, 48), 64, 48)) {
            assertInstanceOf(HostCombinedDelta.class, d, "nine adapters: the CPU engine's Δ");
            assertEquals("cpu", d.device());
        }
    }

    @Test
    void combineOnTheGpuNamesTheModulesItDecomposedOnTheHost() throws Exception {
        Path out = dir.resolve("nine");
        List<String> args = new ArrayList<>(List.of("combine", "--quiet", "--json", "--device", "cuda", "--out", out.toString(), "--base",
                COMBINE.resolve("models/llama_f32").toString(), "--combine", "ties_svd", "--density", "0.5", "--rank", "4"));
        for (int k = 0; k < DeviceCombination.MAX_PARTS + 1; k++) {
            args.addAll(List.of("--adapter", COMBINE.resolve("adapters/qv_r4").toString()));
        }
        JsonNode report = new ObjectMapper().readTree(run(args));
        String notes = report.get("notes").toString();
        assertTrue(notes.contains("decomposed on the CPU") && notes.contains("q_proj"), "nine adapters: the note names the modules: " + notes);
    }

    /** The golden ties_svd case through the pipeline's writer on {@code backend} (left open), into {@code out}. */
    private static CombineReport combineTiesSvd(Backend backend, Path out) throws Exception {
        List<Path> adapters = List.of(COMBINE.resolve("adapters/qv_r4"), COMBINE.resolve("adapters/qkvo_r4"), COMBINE.resolve("adapters/qv_r4b"));
        Combination how = Combination.of(CombineMethod.TIES_SVD, 3, List.of(0.5, 0.3, 0.2), 0.5, Combination.MajoritySign.TOTAL, 1.0, 0, 4, null);
        Path base = COMBINE.resolve("models/llama_f32");
        try (Checkpoint ckpt = Checkpoint.open(base); Adapters loras = Adapters.open(adapters, false);
             AtomicOutput output = AtomicOutput.create(out, false, List.of(base))) {
            AdapterPlan plan = Planner.planAdapter(ckpt, loras.list(), how);
            return CombinedAdapterWriter.write(plan, DType.F32, output, 4, backend);
        }
    }

    @Test
    void combineWithinABudgetOfOneDeltaAtATimeWaitsForRoomAndWritesTheSameAdapter() throws Exception {
        CombineReport free = combineTiesSvd(cuda, dir.resolve("free"));
        CombineReport tight;
        // every Δ of this model rounds up to 1 MiB: the modules combined at once take turns
        try (CudaBackend oneAtATime = GpuTests.openOrSkip(1L << 20)) {
            assertTrue(oneAtATime.parallelism() > 1, "several modules ask at once");
            tight = combineTiesSvd(oneAtATime, dir.resolve("tight"));
            assertEquals(0, oneAtATime.deltaBytesOpen(), "every Δ given back");
        }
        assertEquals(free.modules.size(), tight.modules.size());
        assertTrue(tight.notes.stream().noneMatch(n -> n.contains("decomposed on the CPU")), "every Δ on the device: " + tight.notes);
        for (String f : List.of("adapter_model.safetensors", "adapter_config.json")) {
            assertArrayEquals(Files.readAllBytes(dir.resolve("free").resolve(f)), Files.readAllBytes(dir.resolve("tight").resolve(f)),
                    f + ": waiting for room changes no bit");
        }
    }

    @Test
    void aDeviceWithNoRoomForADeltaReportsItOutOfMemoryHoldsNothingAndServesTheNextOnceFree() throws Exception {
        SafetensorsFile[] small = new SafetensorsFile[1];
        SafetensorsFile[] large = new SafetensorsFile[1];
        int n = 4096; // Δ of 128 MiB
        CombinedUpdate warm = update(small, CombineMethod.MAGNITUDE_PRUNE_SVD, 64, 48, 0.5, false);
        CombinedUpdate u = update(large, CombineMethod.TIES_SVD, n, n, 0.5, false);
        try (SafetensorsFile sf = small[0]; SafetensorsFile lf = large[0]) {
            // this thread's worker (its buffers, stream and cuBLAS handle) exists before the device fills
            try (WeightDelta d = cuda.openCombination(DenseCombination.load(warm, 64, 48), 64, 48)) {
                d.svd(4, RandomizedSvd.Options.defaults(1));
            }
            List<DeviceMemory> hog = new ArrayList<>();
            try {
                fillDevice(hog, 32L << 20);
                DenseCombination big = DenseCombination.load(u, n, n);
                DeviceOutOfMemoryException e = assertThrows(DeviceOutOfMemoryException.class, () -> cuda.openCombination(big, n, n),
                        "less than 48 MiB free for a Δ of 128 MiB");
                assertTrue(e.getMessage().startsWith("cuda:0 ran out of memory"), e.getMessage());
                assertEquals(0, cuda.deltaBytesOpen(), "nothing of the refused Δ is held");
            } finally {
                for (DeviceMemory m : hog) {
                    m.close();
                }
            }
            try (WeightDelta d = cuda.openCombination(DenseCombination.load(u, n, n), n, n)) {
                assertInstanceOf(CudaWeightDelta.class, d, "memory free again: Δ on the device");
                assertEquals(RANK, d.svd(RANK, RandomizedSvd.Options.defaults(1)).svd().rank(), "its SVD runs on the device after the failure");
            }
            assertEquals(0, cuda.deltaBytesOpen());
        }
    }

    /**
     * Takes the device's free memory into {@code hog} until less than {@code margin} + 16 MiB is
     * left: pieces of at most 4 GiB, halved where the rest is smaller or the device refuses one.
     */
    private static void fillDevice(List<DeviceMemory> hog, long margin) {
        cuda.device().bindContext();
        long[] free = {0};
        long[] total = {0};
        long step = 4L << 30;
        while (step >= (16L << 20)) {
            JCuda.cudaMemGetInfo(free, total);
            if (free[0] < margin + step) {
                step /= 2;
                continue;
            }
            try {
                hog.add(new DeviceMemory(step));
            } catch (CudaException e) {
                assertTrue(CudaDevice.isOutOfMemory(e), e.getMessage());
                try {
                    JCuda.cudaGetLastError(); // the refusal is this thread's last runtime error until read
                } catch (CudaException cleared) {
                    // that error, now reset
                }
                step /= 2;
            }
        }
    }

    /** The golden cases of PEFT's SVD methods (scripts/fixtures/make_combine_fixtures.py). */
    static Stream<Arguments> svdCases() throws Exception {
        ObjectMapper json = new ObjectMapper();
        List<Arguments> out = new ArrayList<>();
        try (Stream<Path> s = Files.list(COMBINE.resolve("peft"))) {
            for (Path p : s.sorted().toList()) {
                JsonNode c = json.readTree(p.resolve("case.json").toFile());
                CombineMethod m = CombineMethod.parse(c.get("add_weighted_adapter").get("combination_type").asText(), CombineMethod.forCombine());
                if (m.operand() == CombineMethod.Operand.SVD) {
                    out.add(Arguments.of(p.getFileName().toString(), c, m));
                }
            }
        }
        return out.stream();
    }

    private static List<String> combineArgs(JsonNode c, Path out, String device) {
        JsonNode kw = c.get("add_weighted_adapter");
        List<String> args = new ArrayList<>(List.of("combine", "--quiet", "--json", "--dtype", "f32", "--device", device, "--out", out.toString(),
                "--base", COMBINE.resolve("models").resolve(c.get("model").asText()).toString(), "--combine", kw.get("combination_type").asText()));
        for (JsonNode a : c.get("adapters")) {
            args.add("--adapter");
            args.add(COMBINE.resolve("adapters").resolve(a.asText()).toString());
        }
        List<String> w = new ArrayList<>();
        c.get("weights").forEach(x -> w.add(Double.toString(x.asDouble())));
        args.addAll(List.of("--weights", String.join(",", w)));
        for (String[] o : new String[][] {{"density", "--density"}, {"majority_sign_method", "--majority-sign"}, {"svd_rank", "--rank"},
                {"svd_clamp", "--svd-clamp"}}) {
            if (kw.has(o[0])) {
                args.addAll(List.of(o[1], kw.get(o[0]).asText()));
            }
        }
        return args;
    }

    /** Runs the command line; returns its stdout (the --json report), failing on a non-zero exit. */
    private static String run(List<String> args) {
        CliRun r = CliRun.of(() -> Main.run(args.toArray(new String[0])));
        assertEquals(0, r.code(), r.err());
        return r.out();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("svdCases")
    void combineOnTheGpuWritesTheCpuEnginesAdapterWithinTheFactorsRounding(String name, JsonNode c, CombineMethod method) throws Exception {
        Path cpuOut = dir.resolve("cpu");
        Path gpuOut = dir.resolve("gpu");
        JsonNode cpuReport = new ObjectMapper().readTree(run(combineArgs(c, cpuOut, "cpu")));
        JsonNode gpuReport = new ObjectMapper().readTree(run(combineArgs(c, gpuOut, "cuda")));
        assertTrue(cpuReport.get("engine").asText().startsWith("cpu"), cpuReport.toString());
        assertTrue(gpuReport.get("engine").asText().startsWith("cuda:0"), "the SVDs ran on the GPU: " + gpuReport);
        assertEquals(cpuReport.get("modules"), gpuReport.get("modules"), "the same modules, ranks and shapes");
        assertArrayEquals(Files.readAllBytes(cpuOut.resolve("adapter_config.json")), Files.readAllBytes(gpuOut.resolve("adapter_config.json")),
                "the same adapter_config.json");
        boolean svdOfTheProduct = method.rule() == CombineMethod.Rule.SUM;
        boolean clamped = c.get("add_weighted_adapter").has("svd_clamp");
        try (SafetensorsFile cf = SafetensorsFile.open(cpuOut.resolve("adapter_model.safetensors"));
             SafetensorsFile gf = SafetensorsFile.open(gpuOut.resolve("adapter_model.safetensors"))) {
            List<String> names = new ArrayList<>();
            cf.tensors().forEach(t -> names.add(t.name()));
            List<String> gpuNames = new ArrayList<>();
            gf.tensors().forEach(t -> gpuNames.add(t.name()));
            assertEquals(names, gpuNames, "the same tensors in the same order");
            for (TensorInfo t : cf.tensors()) {
                TensorInfo g = gf.tensor(t.name());
                assertEquals(t.dtype(), g.dtype(), t.name());
                assertArrayEquals(t.shape(), g.shape(), t.name());
                double[] x = values(cf, t);
                double[] y = values(gf, g);
                if (svdOfTheProduct) {
                    assertArrayEquals(x, y, name + " " + t.name() + ": svd's SVD is the host's on both engines, bit for bit");
                    continue;
                }
                // factors of the same SVD: each value within the float32 rounding of both and 1e-6 of the module's largest
                // (a clamp moves the cut by as much as its quantile moves)
                double largest = 0;
                for (double v : x) {
                    largest = Math.max(largest, Math.abs(v));
                }
                double tol = (clamped ? 1e-5 : 1e-6) * largest;
                for (int i = 0; i < x.length; i++) {
                    assertEquals(x[i], y[i], tol + 2 * Math.ulp((float) x[i]), name + " " + t.name() + " element " + i);
                }
            }
        }
    }

    private static double[] values(SafetensorsFile f, TensorInfo t) throws Exception {
        FloatFormat fmt = FloatFormat.of(t.dtype());
        int n = Math.toIntExact(t.numElements());
        double[] out = new double[n];
        try (MappedRegion r = f.map(t, 0, t.sizeInBytes())) {
            for (int i = 0; i < n; i++) {
                out[i] = fmt.decode(fmt.bitsAt(r.bytes(), i));
            }
        }
        return out;
    }
}
