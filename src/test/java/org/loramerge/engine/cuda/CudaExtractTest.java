package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.cli.Main;
import org.loramerge.engine.DeltaRows;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuWeightDelta;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.linalg.Gram;
import org.loramerge.linalg.HouseholderQr;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Svd;
import org.loramerge.linalg.SymmetricEigen;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.TensorSource;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.DenseModels;

/**
 * extract's SVD on the GPU against the CPU engine, its twin: ΔW formed on the device is the CPU's
 * bit for bit; on the same ΔW the singular values agree to 1e-9 relative and the rank-r error has
 * the same ratio to the Eckart–Young optimum (at most 1.01); and {@code extract --device cuda} on
 * the golden extract cases writes adapters whose B·A are the CPU engine's within the factors'
 * rounding, with a report that agrees.
 */
@Tag("gpu")
class CudaExtractTest {
    private static CudaBackend backend;

    @TempDir
    Path dir;

    @BeforeAll
    static void open() {
        backend = GpuTests.openOrSkip();
    }

    @AfterAll
    static void close() {
        if (backend != null) {
            backend.close();
        }
    }

    private static Matrix gaussian(int m, int n, long seed) {
        Random r = new Random(seed);
        Matrix g = Matrix.zeros(m, n);
        for (int i = 0; i < g.data().length; i++) {
            g.data()[i] = r.nextGaussian();
        }
        return g;
    }

    /** One weight "w" [rows, cols] in {@code dtype}, written as a safetensors file under {@code dir}/{@code name}. */
    private static TensorSource weight(Path dir, String name, DType dtype, int rows, int cols, double[] values) throws Exception {
        FloatFormat f = FloatFormat.of(dtype);
        double[] v = new double[values.length];
        for (int i = 0; i < v.length; i++) {
            v[i] = f.round(values[i]);
        }
        Path folder = new DenseModels().put("w", dtype, new long[] {rows, cols}, v).write(dir.resolve(name), "{}");
        SafetensorsFile file = SafetensorsFile.open(folder.resolve("model.safetensors"));
        return new TensorSource(file, file.tensor("w"));
    }

    /** base ~ N(0, 0.02²), tuned = base + a rank-48 change (σ_i = 0.5·0.93^i) + noise N(0, 1e-4²), each rounded to its dtype. */
    private TensorSource[] pair(DType baseType, DType tunedType, int rows, int cols) throws Exception {
        double[] base = gaussian(rows, cols, 1).data().clone();
        for (int i = 0; i < base.length; i++) {
            base[i] *= 0.02;
        }
        double[] sigma = new double[48];
        for (int i = 0; i < sigma.length; i++) {
            sigma[i] = 0.5 * Math.pow(0.93, i);
        }
        Matrix u = HouseholderQr.of(gaussian(rows, sigma.length, 2)).q();
        Matrix v = HouseholderQr.of(gaussian(cols, sigma.length, 3)).q();
        double[] change = new Svd(u, sigma, v.transpose()).reconstruct().data();
        double[] noise = gaussian(rows, cols, 4).data();
        double[] tuned = new double[base.length];
        for (int i = 0; i < tuned.length; i++) {
            tuned[i] = FloatFormat.of(baseType).round(base[i]) + change[i] + 1e-4 * noise[i];
        }
        return new TensorSource[] {weight(dir, "base", baseType, rows, cols, base), weight(dir, "tuned", tunedType, rows, cols, tuned)};
    }

    static Stream<Arguments> dtypes() {
        return Stream.of(Arguments.of(DType.BF16, DType.BF16, 600, 450), Arguments.of(DType.F16, DType.F16, 450, 600),
                Arguments.of(DType.F32, DType.F32, 513, 257), Arguments.of(DType.BF16, DType.F32, 300, 700));
    }

    @ParameterizedTest(name = "{0} base, {1} tuned, {2}x{3}")
    @MethodSource("dtypes")
    void gpuSvdOfTheSameDeltaMatchesTheCpuTwin(DType baseType, DType tunedType, int rows, int cols) throws Exception {
        TensorSource[] s = pair(baseType, tunedType, rows, cols);
        int rank = 32;
        RandomizedSvd.Options options = RandomizedSvd.Options.defaults(4);
        try (WeightDelta gpu = backend.openDelta("w", s[0], s[1], rows, cols);
             WeightDelta cpu = CpuWeightDelta.open("w", s[0], s[1], rows, cols, 4)) {
            CudaWeightDelta onDevice = assertInstanceOf(CudaWeightDelta.class, gpu, "ΔW is kept on the device");
            assertEquals("cuda:0", gpu.device());
            double[] exact = new double[rows * cols];
            new DeltaRows("w", s[0], s[1], rows, cols).forEachBlock((row0, n, values) -> System.arraycopy(values, 0, exact, row0 * cols, n * cols));
            assertArrayEquals(exact, onDevice.values().data(), "ΔW on the device is the CPU's, bit for bit");
            assertEquals(cpu.deltaSquared(), gpu.deltaSquared(), 1e-12 * cpu.deltaSquared());

            RandomizedSvd.Result c = cpu.svd(rank, options);
            long held = backend.device().pool().outstanding();
            RandomizedSvd.Result g = gpu.svd(rank, options);
            assertEquals(held, backend.device().pool().outstanding(), "the SVD gives back every device buffer it took (its bases included)");
            assertEquals(rank, g.svd().rank());
            for (int i = 0; i < rank; i++) {
                assertEquals(c.svd().sigma()[i], g.svd().sigma()[i], 1e-9 * c.svd().sigma()[i], "σ" + i);
            }
            SymmetricEigen eig = SymmetricEigen.of(Gram.of(new DeltaRows("w", s[0], s[1], rows, cols), 4), 4);
            double top = 0;
            for (double l : eig.largest(rank)) {
                top += l;
            }
            double optimal = Math.sqrt(Math.max(0, cpu.deltaSquared() - top) / cpu.deltaSquared());
            double cpuRatio = c.relativeError(rank) / optimal;
            double gpuRatio = g.relativeError(rank) / optimal;
            assertTrue(gpuRatio <= 1.01, "the GPU's error is " + gpuRatio + " times the optimum");
            assertEquals(cpuRatio, gpuRatio, 1e-6, "the same ratio to the optimum as the CPU's");

            // the factors as extract writes them, measured by both engines
            Matrix uw = Matrix.zeros(rows, rank);
            Matrix vtw = Matrix.zeros(rank, cols);
            for (int k = 0; k < rank; k++) {
                double root = Math.sqrt(c.svd().sigma()[k]);
                for (int i = 0; i < rows; i++) {
                    uw.set(i, k, (float) (c.svd().u().get(i, k) * root));
                }
                for (int j = 0; j < cols; j++) {
                    vtw.set(k, j, (float) (c.svd().vt().get(k, j) * root));
                }
            }
            double cpuResidual = cpu.residualSquared(uw, vtw);
            assertEquals(cpuResidual, gpu.residualSquared(uw, vtw), 1e-9 * cpuResidual, "‖ΔW − U·Vᵀ‖² on the device");
        }
    }

    /**
     * An F32 weight pair whose ΔW is exactly rank 8 with every 5th column exactly zero: small dyadic
     * values, so that ΔW = tuned − base is formed without rounding. A sketch of 42 columns is then
     * rank-deficient, so CholeskyQR3 breaks down and the device falls back to Householder's QR on
     * the host, whose Q it copies back up as the next pass's basis.
     */
    @Test
    void anExactlyRank8DeltaWithZeroColumnsIsRecoveredOnTheGpuAsOnTheCpu() throws Exception {
        int rows = 500;
        int cols = 350;
        int exact = 8;
        Random r = new Random(8);
        double[] left = new double[rows * exact];
        double[] right = new double[exact * cols];
        for (int i = 0; i < left.length; i++) {
            left[i] = (r.nextInt(33) - 16) / 64.0;
        }
        for (int i = 0; i < right.length; i++) {
            right[i] = i % cols % 5 == 4 ? 0 : (r.nextInt(33) - 16) / 64.0;
        }
        double[] base = new double[rows * cols];
        double[] tuned = new double[rows * cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                double d = 0;
                for (int t = 0; t < exact; t++) {
                    d += left[i * exact + t] * right[t * cols + j];
                }
                base[i * cols + j] = (r.nextInt(2049) - 1024) / 1024.0;
                tuned[i * cols + j] = base[i * cols + j] + d; // multiples of 2^-12 below 2: exact in F32
            }
        }
        TensorSource b = weight(dir, "base", DType.F32, rows, cols, base);
        TensorSource t = weight(dir, "tuned", DType.F32, rows, cols, tuned);
        int rank = 32;
        RandomizedSvd.Options options = RandomizedSvd.Options.defaults(4);
        try (WeightDelta gpu = backend.openDelta("w", b, t, rows, cols);
             WeightDelta cpu = CpuWeightDelta.open("w", b, t, rows, cols, 4)) {
            assertInstanceOf(CudaWeightDelta.class, gpu, "ΔW is kept on the device");
            RandomizedSvd.Result c = cpu.svd(rank, options);
            long held = backend.device().pool().outstanding();
            RandomizedSvd.Result g = gpu.svd(rank, options);
            assertEquals(held, backend.device().pool().outstanding(), "the SVD gives back every device buffer it took (its bases included)");
            assertTrue(((CudaWeightDelta) gpu).householderFallbacks() > 0, "CholeskyQR3 broke down on a sketch of rank 8 and Householder's QR made the basis");
            double top = c.svd().sigma()[0];
            for (int i = 0; i < rank; i++) {
                // past the 8th the singular values are roundoff of the largest on both engines
                assertEquals(c.svd().sigma()[i], g.svd().sigma()[i], 1e-9 * Math.max(top * 1e-4, c.svd().sigma()[i]), "σ" + i);
            }
            assertTrue(g.svd().sigma()[exact] < 1e-12 * top, "ΔW has rank 8: σ8 = " + g.svd().sigma()[exact]);
            Svd eight = g.svd().truncate(exact);
            Matrix u = eight.u();
            Matrix vt = eight.vt();
            for (int k = 0; k < exact; k++) {
                for (int j = 4; j < cols; j += 5) {
                    assertTrue(Math.abs(vt.get(k, j)) < 1e-12, "a zero column of ΔW has a zero column in Vᵀ, not " + j);
                }
            }
            Matrix g8 = u.copy();
            for (int i = 0; i < rows; i++) {
                for (int k = 0; k < exact; k++) {
                    g8.set(i, k, u.get(i, k) * eight.sigma()[k]);
                }
            }
            assertTrue(orthonormalityError(u) < 1e-12 && orthonormalityError(vt.transpose()) < 1e-12, "the singular vectors are orthonormal");
            double residual = gpu.residualSquared(g8, vt);
            assertTrue(residual <= 1e-24 * gpu.deltaSquared(), "ΔW is recovered to roundoff by its 8 triplets: " + residual / gpu.deltaSquared());
        }
    }

    /** max |QᵀQ − I|. */
    private static double orthonormalityError(Matrix q) {
        Matrix g = q.transposeMultiply(q);
        double worst = 0;
        for (int i = 0; i < g.rows(); i++) {
            for (int j = 0; j < g.cols(); j++) {
                worst = Math.max(worst, Math.abs(g.get(i, j) - (i == j ? 1 : 0)));
            }
        }
        return worst;
    }

    @Test
    void nanInTheTunedWeightIsTheSameBadInputAsOnTheCpu() throws Exception {
        int rows = 64;
        int cols = 96;
        double[] base = gaussian(rows, cols, 5).data();
        double[] tuned = base.clone();
        tuned[17 * cols + 5] = Double.NaN;
        tuned[40 * cols + 1] = Double.POSITIVE_INFINITY;
        TensorSource b = weight(dir, "base", DType.BF16, rows, cols, base);
        TensorSource t = weight(dir, "tuned", DType.BF16, rows, cols, tuned);
        ExtractException onGpu = assertThrows(ExtractException.class, () -> backend.openDelta("w", b, t, rows, cols).close());
        ExtractException onCpu = assertThrows(ExtractException.class, () -> CpuWeightDelta.open("w", b, t, rows, cols, 1).close());
        assertEquals(ExtractException.Reason.NON_FINITE, onGpu.reason());
        assertEquals(onCpu.getMessage(), onGpu.getMessage());
        assertTrue(onGpu.getMessage().contains("[17, 5]"), onGpu.getMessage());
    }

    // ------------------------------------------------------------------ the golden extract cases through the CLI

    static final Path CASES = Paths.get("src/test/resources/extract");

    static Stream<String> cases() throws Exception {
        try (Stream<Path> s = Files.list(CASES)) {
            return s.filter(p -> Files.isRegularFile(p.resolve("case.json"))).map(p -> p.getFileName().toString()).sorted().toList().stream();
        }
    }

    /** The case's recorded command with its folders inside the case, the output at {@code out}, on {@code device}, with --json. */
    private static String[] command(Path caseDir, Path out, String device) throws Exception {
        JsonNode info = new ObjectMapper().readTree(caseDir.resolve("case.json").toFile());
        String[] words = info.path("extract").path("command").asText().split(" ");
        List<String> args = new ArrayList<>();
        for (int i = 1; i < words.length; i++) {
            String w = words[i];
            String previous = args.isEmpty() ? "" : args.get(args.size() - 1);
            if (previous.equals("--base") || previous.equals("--tuned")) {
                w = caseDir.resolve(w).toString();
            } else if (previous.equals("--out")) {
                w = out.toString();
            }
            args.add(w);
        }
        args.addAll(List.of("--device", device, "--json", "--quiet"));
        return args.toArray(new String[0]);
    }

    /** Per LoRA pair of an adapter file, B·A as [B's rows, A's columns], with the factor dtype. */
    private static Map<String, double[]> products(Path adapter, Map<String, DType> dtypes) throws Exception {
        Map<String, double[]> values = DenseModels.readFile(adapter.resolve("adapter_model.safetensors"));
        Map<String, double[]> out = new HashMap<>();
        try (SafetensorsFile f = SafetensorsFile.open(adapter.resolve("adapter_model.safetensors"))) {
            for (TensorInfo a : f.tensors()) {
                String name = a.name();
                String bName = name.replace("lora_embedding_A", "lora_embedding_B").replace("lora_A", "lora_B");
                if (bName.equals(name)) {
                    continue; // a B, or a tensor saved whole
                }
                TensorInfo b = f.tensor(bName);
                int r = Math.toIntExact(a.dim(0));
                int p = Math.toIntExact(b.dim(0));
                int q = Math.toIntExact(a.numElements() / r);
                double[] av = values.get(name);
                double[] bv = values.get(bName);
                double[] prod = new double[p * q];
                for (int i = 0; i < p; i++) {
                    for (int k = 0; k < r; k++) {
                        double x = bv[i * r + k];
                        for (int j = 0; j < q; j++) {
                            prod[i * q + j] += x * av[k * q + j];
                        }
                    }
                }
                out.put(name, prod);
                dtypes.put(name, a.dtype());
            }
        }
        return out;
    }

    private static double norm(double[] a) {
        double s = 0;
        for (double x : a) {
            s += x * x;
        }
        return Math.sqrt(s);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void extractOnTheGpuWritesTheCpuEnginesAdapterUpToTheFactorsRounding(String name) throws Exception {
        Path caseDir = CASES.resolve(name);
        Path cpuOut = dir.resolve("cpu");
        Path gpuOut = dir.resolve("gpu");
        String[] onCpu = command(caseDir, cpuOut, "cpu");
        String[] onGpu = command(caseDir, gpuOut, "cuda");
        CliRun cpu = CliRun.of(() -> Main.run(onCpu));
        CliRun gpu = CliRun.of(() -> Main.run(onGpu));
        assertEquals(0, cpu.code(), cpu::both);
        assertEquals(0, gpu.code(), gpu::both);
        JsonNode c = new ObjectMapper().readTree(cpu.out());
        JsonNode g = new ObjectMapper().readTree(gpu.out());
        assertEquals("cpu", c.get("svdDevice").asText());
        assertEquals("cuda:0", g.get("svdDevice").asText());
        assertEquals(Files.readString(cpuOut.resolve("adapter_config.json")), Files.readString(gpuOut.resolve("adapter_config.json")),
                "the same ranks, patterns and modules");
        assertEquals(c.get("modules").size(), g.get("modules").size());
        for (int i = 0; i < c.get("modules").size(); i++) {
            JsonNode cm = c.get("modules").get(i);
            JsonNode gm = g.get("modules").get(i);
            String where = name + " " + cm.get("name").asText();
            assertEquals(cm.get("name").asText(), gm.get("name").asText());
            assertEquals(cm.get("rank").asInt(), gm.get("rank").asInt(), where);
            assertEquals(cm.get("energyKept").asDouble(), gm.get("energyKept").asDouble(), 1e-9, where);
            // the SVD's error comes from ‖ΔW‖² − Σσ², so its square is what agrees (to the σ's agreement, relative to ‖ΔW‖²)
            double ct = cm.get("truncationError").asDouble();
            double gt = gm.get("truncationError").asDouble();
            assertEquals(ct * ct, gt * gt, 1e-10 + 1e-6 * ct * ct, where + " truncation error " + ct + " against " + gt);
            double cw = cm.get("relativeError").asDouble();
            // the written error, measured element by element, includes the factors' rounding to their dtype, which the two
            // engines' slightly different vectors may round the other way here and there
            assertEquals(cw, gm.get("relativeError").asDouble(), (cm.get("dtype").asText().equals("F32") ? 0.02 : 0.05) * cw,
                    where + " written error");
        }
        assertEquals(c.get("relativeError").asDouble(), g.get("relativeError").asDouble(), 0.05 * c.get("relativeError").asDouble() + 1e-9);
        Map<String, DType> dtypes = new HashMap<>();
        Map<String, double[]> cp = products(cpuOut, dtypes);
        Map<String, double[]> gp = products(gpuOut, new HashMap<>());
        assertEquals(c.get("modules").size(), cp.size(), "one B·A per extracted module");
        assertEquals(cp.keySet(), gp.keySet());
        for (String k : cp.keySet()) {
            double[] a = cp.get(k);
            double[] b = gp.get(k);
            double[] diff = new double[a.length];
            for (int i = 0; i < a.length; i++) {
                diff[i] = a[i] - b[i];
            }
            // F32 factors: the two SVDs' rounding; BF16/F16 factors: also each factor's rounding, 2^-8 or 2^-11 relative
            double tolerance = dtypes.get(k) == DType.F32 ? 1e-6 : dtypes.get(k) == DType.F16 ? 4e-3 : 2e-2;
            assertTrue(norm(diff) <= tolerance * norm(a), name + " " + k + ": ‖B·A_gpu − B·A_cpu‖ / ‖B·A_cpu‖ = " + norm(diff) / norm(a));
        }
        // tensors saved whole are the tuned model's either way
        List<String> cpuFiles = Arrays.asList(cpuOut.toFile().list());
        List<String> gpuFiles = Arrays.asList(gpuOut.toFile().list());
        assertEquals(cpuFiles.stream().sorted().toList(), gpuFiles.stream().sorted().toList());
    }
}
