package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.math.BigDecimal;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.CombinationDeltas;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.ExactReference;
import org.loramerge.engine.FactorCombination;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.AdapterPlan;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The golden cases made with PEFT 0.21's add_weighted_adapter (scripts/fixtures/make_combine_fixtures.py):
 * {@code combine} writes PEFT's combined factors (within PEFT's float32 arithmetic), merging that
 * adapter gives PEFT's merge of its own combination, and {@code merge --combine} of the methods
 * that mean the same in both commands (cat, linear) is the exact merge of the combination and
 * within PEFT's rounding of PEFT's merge.
 */
class CombinePeftTest {
    @TempDir
    Path tmp;

    /** Every PEFT case: combine offers every add_weighted_adapter method. */
    static Stream<String> combineCases() throws Exception {
        return CombineCases.cases("peft");
    }

    /** The cases whose method means PEFT's in merge too: cat, linear and the SVD methods. */
    static Stream<String> mergeCases() throws Exception {
        List<String> out = new ArrayList<>();
        for (String c : CombineCases.cases("peft").toList()) {
            CombineMethod m = method(CombineCases.caseJson("peft", c));
            CombineMethod inMerge = CombineMethod.parse(m.cliName(), CombineMethod.forMerge());
            if (inMerge == m) {
                out.add(c);
            }
        }
        return out.stream();
    }

    /** The cases of the SVD methods. */
    static Stream<String> svdCases() throws Exception {
        List<String> out = new ArrayList<>();
        for (String c : CombineCases.cases("peft").toList()) {
            if (method(CombineCases.caseJson("peft", c)).operand() == CombineMethod.Operand.SVD) {
                out.add(c);
            }
        }
        return out.stream();
    }

    private static CombineMethod method(JsonNode c) {
        return CombineMethod.parse(c.get("add_weighted_adapter").get("combination_type").asText(), CombineMethod.forCombine());
    }

    private static List<String> combineArgs(JsonNode c) {
        JsonNode kw = c.get("add_weighted_adapter");
        List<String> args = new ArrayList<>(List.of("--base", CombineCases.model(c).toString(), "--combine", kw.get("combination_type").asText()));
        args.addAll(CombineCases.adapterArgs(c));
        args.addAll(CombineCases.weightArgs(c));
        if (kw.has("density")) {
            args.addAll(List.of("--density", kw.get("density").asText()));
        }
        if (kw.has("majority_sign_method")) {
            args.addAll(List.of("--majority-sign", kw.get("majority_sign_method").asText()));
        }
        if (kw.has("svd_rank")) {
            args.addAll(List.of("--rank", kw.get("svd_rank").asText()));
        }
        if (kw.has("svd_clamp")) {
            args.addAll(List.of("--svd-clamp", kw.get("svd_clamp").asText()));
        }
        return args;
    }

    /** Runs combine on a case into {@code out}, in the dtype PEFT wrote. */
    private Path combine(String name, JsonNode c) throws Exception {
        Path out = tmp.resolve("combined");
        DType peftType;
        try (SafetensorsFile peft = SafetensorsFile.open(CombineCases.ROOT.resolve("peft").resolve(name).resolve("adapter_model.safetensors"))) {
            peftType = peft.tensors().iterator().next().dtype();
        }
        List<String> args = new ArrayList<>(List.of("combine", "--quiet", "--device", "cpu", "--out", out.toString(), "--dtype",
                peftType.name().toLowerCase(Locale.ROOT)));
        args.addAll(combineArgs(c));
        Object[] r = CombineCases.run(args);
        assertEquals(0, r[0], (String) r[1]);
        return out;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("combineCases")
    void combineWritesTheFactorsPeftWrites(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("peft", name);
        Path ours = combine(name, c);
        try (SafetensorsFile mine = SafetensorsFile.open(ours.resolve("adapter_model.safetensors"));
             SafetensorsFile peft = SafetensorsFile.open(CombineCases.ROOT.resolve("peft").resolve(name).resolve("adapter_model.safetensors"))) {
            List<String> peftKeys = new ArrayList<>();
            peft.tensors().forEach(t -> peftKeys.add(t.name()));
            List<String> myKeys = new ArrayList<>();
            mine.tensors().forEach(t -> myKeys.add(t.name()));
            assertEquals(peftKeys.stream().filter(k -> k.contains(".lora_")).sorted().toList(), myKeys.stream().sorted().toList(),
                    name + ": the same LoRA keys as PEFT's combined adapter");
            if (method(c).operand() == CombineMethod.Operand.SVD) {
                if (!c.get("add_weighted_adapter").has("svd_clamp")) {
                    compareProducts(name, mine, peft);
                } // else the clamp depends on the singular vectors' signs: svdClampClampsBothFactors... compares it
                return;
            }
            for (TensorInfo p : peft.tensors()) {
                if (!p.name().contains(".lora_")) {
                    continue; // PEFT also saves an embedding's base_layer copy, which equals the base
                }
                TensorInfo m = mine.tensor(p.name());
                assertArrayEquals(p.shape(), m.shape(), p.name() + " shape");
                assertEquals(p.dtype(), m.dtype(), p.name() + " dtype");
                double[] pv = CombineCases.values(peft, p);
                double[] mv = CombineCases.values(mine, m);
                double scale = 0;
                for (double v : pv) {
                    scale = Math.max(scale, Math.abs(v));
                }
                FloatFormat f = FloatFormat.of(p.dtype());
                for (int i = 0; i < pv.length; i++) {
                    // PEFT: float32 weights and sums; a 16-bit adapter rounds PEFT's float32 result a second time
                    double tol = 16 * 0x1p-24 * scale + f.ulp(Math.max(Math.abs(pv[i]), Math.abs(mv[i])));
                    assertTrue(Math.abs(pv[i] - mv[i]) <= tol, name + " " + p.name() + "[" + i + "]: ours " + mv[i] + ", PEFT " + pv[i]);
                }
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("combineCases")
    void mergingTheCombinedAdapterGivesPeftsMergeOfItsCombination(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("peft", name);
        Path adapter = combine(name, c);
        Path out = tmp.resolve("merged");
        Object[] r = CombineCases.run(List.of("merge", "--quiet", "--device", "cpu", "--base", CombineCases.model(c).toString(), "--adapter",
                adapter.toString(), "--out", out.toString()));
        assertEquals(0, r[0], (String) r[1]);
        double factor = name.equals("rslora_cat") ? Math.sqrt(8) : 1; // PEFT 0.21 keeps use_rslora: its scale is sqrt(r) = sqrt(8)
        if (!c.get("add_weighted_adapter").has("svd_clamp")) { // the clamp depends on the singular vectors' signs, which are LAPACK's in PEFT
            comparePeftMerged(name, c, out, factor);
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("mergeCases")
    void mergeCombineIsTheExactMergeOfTheCombinationAndWithinPeftsRoundingOfPeft(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("peft", name);
        Path out = tmp.resolve("merged");
        List<String> args = new ArrayList<>(List.of("merge", "--quiet", "--device", "cpu", "--out", out.toString()));
        args.addAll(combineArgs(c));
        Object[] r = CombineCases.run(args);
        assertEquals(0, r[0], (String) r[1]);
        double factor = name.equals("rslora_cat") ? Math.sqrt(8) : 1;
        if (!c.get("add_weighted_adapter").has("svd_clamp")) {
            comparePeftMerged(name, c, out, factor);
        }
        // every adapted element is the exact merge of the planned combination, rounded once
        List<LoraAdapter> adapters = new ArrayList<>();
        try (Checkpoint base = Checkpoint.open(CombineCases.model(c)); Checkpoint ours = Checkpoint.open(out)) {
            for (JsonNode a : c.get("adapters")) {
                adapters.add(LoraAdapter.open(CombineCases.ROOT.resolve("adapters").resolve(a.asText())));
            }
            MergePlan plan = Planner.plan(base, adapters, PlanOptions.defaults(), combination(c, CombineMethod.forMerge()));
            for (OutputTensor t : plan.tensors()) {
                if (!t.isAdapted()) {
                    continue;
                }
                TensorJob job = TensorJob.prepare(t);
                double[] src = CombineCases.values(t.source().file(), t.source().info());
                int[] got = CombineCases.bits(ours.fileOf(t.name()), ours.tensor(t.name()));
                int cols = job.cols();
                for (long i = 0; i < job.rows(); i++) {
                    double[] row = new double[cols];
                    System.arraycopy(src, (int) (i * cols), row, 0, cols);
                    for (int j = 0; j < cols; j++) {
                        BigDecimal exact = ExactMath.merged(job, row, i, j);
                        assertEquals(ExactReference.roundBits(exact, t.dtype()), got[(int) (i * cols + j)], name + " " + t.name() + "[" + i + "," + j + "]");
                    }
                }
            }
        } finally {
            for (LoraAdapter a : adapters) {
                a.close();
            }
        }
    }

    /**
     * Our merged model against PEFT's merge of its combined adapter: every tensor PEFT changed within
     * PEFT's rounding (4 ulps of the value, plus of the tensor's largest change 2^-19 for PEFT's
     * float32 factors, or 2^-6 where PEFT's combined factors are 16-bit and its delta is rounded to
     * 16 bits before the addition), and {@code factor} times our change where PEFT scales the
     * combination (rsLoRA); every other tensor the base's bytes.
     */
    private static void comparePeftMerged(String name, JsonNode c, Path out, double factor) throws Exception {
        Path dir = CombineCases.ROOT.resolve("peft").resolve(name);
        double factorError;
        try (SafetensorsFile adapter = SafetensorsFile.open(dir.resolve("adapter_model.safetensors"))) {
            factorError = adapter.tensors().iterator().next().dtype() == DType.F32 ? 0x1p-19 : 0x1p-6;
        }
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint base = Checkpoint.open(CombineCases.model(c));
             SafetensorsFile peft = SafetensorsFile.open(dir.resolve("merged.safetensors"))) {
            for (Map.Entry<String, TensorInfo> e : base.tensors().entrySet()) {
                TensorInfo mine = ours.tensor(e.getKey());
                assertNotNull(mine, e.getKey());
                double[] b = CombineCases.values(base.fileOf(e.getKey()), e.getValue());
                double[] m = CombineCases.values(ours.fileOf(e.getKey()), mine);
                TensorInfo p = peft.tensor(e.getKey());
                if (p == null) {
                    assertArrayEquals(b, m, name + ": " + e.getKey() + " is not changed by PEFT, nor by us");
                    continue;
                }
                double[] pv = CombineCases.values(peft, p);
                FloatFormat f = FloatFormat.of(p.dtype());
                double maxDelta = 0;
                for (int i = 0; i < pv.length; i++) {
                    maxDelta = Math.max(maxDelta, Math.abs(pv[i] - b[i]));
                }
                boolean changed = false;
                for (int i = 0; i < pv.length; i++) {
                    double expected = b[i] + factor * (m[i] - b[i]);
                    double tol = 4 * f.ulp(Math.max(Math.abs(pv[i]), Math.abs(expected))) + factorError * maxDelta;
                    assertTrue(Math.abs(pv[i] - expected) <= tol, name + " " + e.getKey() + "[" + i + "]: ours " + m[i] + " (base " + b[i]
                            + ", factor " + factor + "), PEFT " + pv[i]);
                    changed |= m[i] != b[i];
                }
                assertTrue(changed, name + ": " + e.getKey() + " is changed by PEFT and must be by us");
            }
        }
    }

    /**
     * SVD methods: the singular vectors of a truncated SVD are PEFT's only up to sign (and, beyond
     * Δ's rank, not at all), so the products B'·A' are compared, within 2^-14 of the largest
     * (PEFT's SVD and its sums are float32).
     */
    private static void compareProducts(String name, SafetensorsFile mine, SafetensorsFile peft) throws Exception {
        for (TensorInfo p : peft.tensors()) {
            if (!p.name().contains(".lora_B") && !p.name().contains(".lora_embedding_B")) {
                continue;
            }
            String aKey = p.name().replace("lora_B", "lora_A").replace("lora_embedding_B", "lora_embedding_A");
            double[] pp = product(CombineCases.values(peft, p), CombineCases.values(peft, peft.tensor(aKey)), p.shape());
            double[] mp = product(CombineCases.values(mine, mine.tensor(p.name())), CombineCases.values(mine, mine.tensor(aKey)), p.shape());
            double scale = 0;
            for (double v : pp) {
                scale = Math.max(scale, Math.abs(v));
            }
            for (int i = 0; i < pp.length; i++) {
                assertTrue(Math.abs(pp[i] - mp[i]) <= 0x1p-14 * scale, name + " " + p.name() + " B'·A' element " + i + ": ours " + mp[i]
                        + ", PEFT " + pp[i]);
            }
        }
    }

    /** B [out, r(, 1...)] times A [r, rest] as a row-major [out, rest]. */
    private static double[] product(double[] b, double[] a, long[] bShape) {
        int out = (int) bShape[0];
        int r = (int) bShape[1];
        int rest = a.length / r;
        double[] p = new double[out * rest];
        for (int i = 0; i < out; i++) {
            for (int k = 0; k < r; k++) {
                for (int j = 0; j < rest; j++) {
                    p[i * rest + j] += b[i * r + k] * a[k * rest + j];
                }
            }
        }
        return p;
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("svdCases")
    void theTruncatedSvdIsWithinOnePercentOfTheOptimalRankRError(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("peft", name);
        List<LoraAdapter> adapters = new ArrayList<>();
        try (Checkpoint base = Checkpoint.open(CombineCases.model(c))) {
            for (JsonNode a : c.get("adapters")) {
                adapters.add(LoraAdapter.open(CombineCases.ROOT.resolve("adapters").resolve(a.asText())));
            }
            AdapterPlan plan = Planner.planAdapter(base, adapters, combination(c, CombineMethod.forCombine()));
            for (AdapterPlan.Module m : plan.modules()) {
                JsonNode want = c.get("svd").get(m.module());
                CombinedUpdate u = m.update();
                FactorCombination.Factors f = FactorCombination.svd(u, CombinationDeltas.HOST);
                // Δ in B·A layout, from the method's own definition (the dense combination, or the weighted sum)
                boolean transposed = u.layout() == Layout.CONV1D || u.layout() == Layout.EMBEDDING;
                long rows = m.weightShape()[0];
                long cols = TensorInfo.numElements(m.weightShape()) / m.weightShape()[0];
                double[] dense = denseDelta(u, rows, cols);
                int baRows = (int) (transposed ? cols : rows);
                int baCols = (int) (transposed ? rows : cols);
                double err = 0;
                double norm = 0;
                for (int i = 0; i < baRows; i++) {
                    for (int j = 0; j < baCols; j++) {
                        double d = transposed ? dense[(int) (j * cols + i)] : dense[(int) (i * cols + j)];
                        double p = 0;
                        for (int k = 0; k < f.rank(); k++) {
                            p += f.b()[i * f.rank() + k] * f.a()[k * baCols + j];
                        }
                        err += (d - p) * (d - p);
                        norm += d * d;
                    }
                }
                double optimal = want.get("optimal_residual").asDouble();
                assertEquals(want.get("frobenius").asDouble(), Math.sqrt(norm), 1e-6 * Math.sqrt(norm), name + " " + m.module() + ": ‖Δ‖ as PEFT's");
                assertTrue(Math.sqrt(err) <= 1.01 * optimal + 1e-12 * Math.sqrt(norm), name + " " + m.module() + ": rank-" + f.rank()
                        + " error " + Math.sqrt(err) + ", optimal " + optimal);
            }
        } finally {
            for (LoraAdapter a : adapters) {
                a.close();
            }
        }
    }

    /** The combination's Δ in the weight's layout: Σ (w·s)·U·Vᵀ for svd, else the dense combination's. */
    private static double[] denseDelta(CombinedUpdate u, long rows, long cols) throws Exception {
        double[] out = new double[(int) (rows * cols)];
        double[] row = new double[(int) cols];
        if (u.how().method().rule() == CombineMethod.Rule.SUM) {
            for (CombinedUpdate.Part p : u.parts()) {
                LowRankTerm t = LowRankTerm.load(p.term(), rows, cols);
                double c = p.weight() * t.scale();
                for (int i = 0; i < rows; i++) {
                    for (int j = 0; j < cols; j++) {
                        double s = 0;
                        for (int k = 0; k < t.rank(); k++) {
                            s += t.u()[i * t.rank() + k] * t.vt()[k * (int) cols + j];
                        }
                        out[(int) (i * cols + j)] += c * s;
                    }
                }
            }
            return out;
        }
        DenseCombination d = DenseCombination.load(u, rows, cols);
        d.selectAll(rows);
        for (int i = 0; i < rows; i++) {
            d.deltaRow(i, row);
            System.arraycopy(row, 0, out, (int) (i * cols), (int) cols);
        }
        return out;
    }

    /**
     * svd_clamp: our SVD's components turned to the signs of PEFT's (clamping keeps signs), then
     * clamped by our rule, are PEFT's clamped factors: the quantile over both factors, its linear
     * interpolation and the symmetric bounds are PEFT's.
     */
    @Test
    void svdClampClampsBothFactorsToTheQuantileOfTheirValuesAsPeftDoes() throws Exception {
        JsonNode c = CombineCases.caseJson("peft", "svd_clamp");
        List<LoraAdapter> adapters = new ArrayList<>();
        try (Checkpoint base = Checkpoint.open(CombineCases.model(c));
             SafetensorsFile peft = SafetensorsFile.open(CombineCases.ROOT.resolve("peft/svd_clamp/adapter_model.safetensors"))) {
            for (JsonNode a : c.get("adapters")) {
                adapters.add(LoraAdapter.open(CombineCases.ROOT.resolve("adapters").resolve(a.asText())));
            }
            AdapterPlan plan = Planner.planAdapter(base, adapters, combination(c, CombineMethod.forCombine()));
            int clampedSomewhere = 0;
            for (AdapterPlan.Module m : plan.modules()) {
                FactorCombination.Factors f = FactorCombination.svd(m.update(), CombinationDeltas.HOST);
                double[] pb = CombineCases.values(peft, peft.tensor(m.bKey()));
                double[] pa = CombineCases.values(peft, peft.tensor(m.aKey()));
                int r = f.rank();
                int out = pb.length / r;
                int rest = pa.length / r;
                double[] b = f.b().clone();
                double[] a = f.a().clone();
                for (int k = 0; k < r; k++) {
                    double dot = 0;
                    for (int i = 0; i < out; i++) {
                        dot += b[i * r + k] * pb[i * r + k];
                    }
                    if (dot < 0) {
                        for (int i = 0; i < out; i++) {
                            b[i * r + k] = -b[i * r + k];
                        }
                        for (int j = 0; j < rest; j++) {
                            a[k * rest + j] = -a[k * rest + j];
                        }
                    }
                }
                FactorCombination.Factors clamped = FactorCombination.clamp(new FactorCombination.Factors(a, b, r), 0.9);
                double scale = 0;
                for (double v : pb) {
                    scale = Math.max(scale, Math.abs(v));
                }
                for (int i = 0; i < pb.length; i++) {
                    assertEquals(pb[i], clamped.b()[i], 0x1p-16 * scale + 1e-7, m.bKey() + "[" + i + "]");
                    clampedSomewhere += clamped.b()[i] != b[i] ? 1 : 0;
                }
                for (int i = 0; i < pa.length; i++) {
                    assertEquals(pa[i], clamped.a()[i], 0x1p-16 + 1e-7, m.aKey() + "[" + i + "]");
                    clampedSomewhere += clamped.a()[i] != a[i] ? 1 : 0;
                }
            }
            assertTrue(clampedSomewhere > 0, "the 0.9 quantile clamps some values");
        } finally {
            for (LoraAdapter a : adapters) {
                a.close();
            }
        }
    }

    /** The case's combination as the command line would make it. */
    private static Combination combination(JsonNode c, List<CombineMethod> choices) throws Exception {
        JsonNode kw = c.get("add_weighted_adapter");
        List<Double> weights = new ArrayList<>();
        c.get("weights").forEach(w -> weights.add(w.asDouble()));
        return Combination.of(CombineMethod.parse(kw.get("combination_type").asText(), choices), weights.size(), weights,
                kw.path("density").asDouble(1.0), Combination.MajoritySign.valueOf(
                        kw.path("majority_sign_method").asText("total").toUpperCase(Locale.ROOT)), 1.0, 0, kw.path("svd_rank").asInt(0),
                kw.has("svd_clamp") ? kw.get("svd_clamp").asDouble() : null);
    }

    @Test
    void theRsloraCaseShowsPeftsScaleQuirk() throws Exception {
        // PEFT 0.21 copies use_rslora: its combined adapter's scale is lora_alpha / sqrt(r) = 8 / sqrt(8)
        JsonNode cfg = new ObjectMapper().readTree(
                CombineCases.ROOT.resolve("peft/rslora_cat/adapter_config.json").toFile());
        assertTrue(cfg.get("use_rslora").asBoolean(), "PEFT keeps the first adapter's use_rslora");
        assertEquals(8, cfg.get("r").asInt());
        assertEquals(8, cfg.get("lora_alpha").asInt());
    }
}
