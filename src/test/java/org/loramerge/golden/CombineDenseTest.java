package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

/**
 * The task-arithmetic family of {@code merge --combine} (task_arithmetic, ties, dare_linear,
 * dare_ties, magnitude_prune) against the independent float64 reference
 * scripts/fixtures/combine_reference.py: every adapted element bit for bit, every other tensor
 * byte for byte the base's.
 */
class CombineDenseTest {
    @TempDir
    Path tmp;

    static Stream<String> cases() throws Exception {
        return CombineCases.cases("dense");
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void mergeCombineEqualsTheFloat64ReferenceBitForBit(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("dense", name);
        JsonNode o = c.get("options");
        Path out = tmp.resolve("out");
        List<String> args = new ArrayList<>(List.of("merge", "--base", CombineCases.model(c).toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet", "--threads", "2", "--combine", o.get("method").asText()));
        args.addAll(CombineCases.adapterArgs(c));
        args.addAll(CombineCases.weightArgs(c));
        if (o.has("density")) {
            args.addAll(List.of("--density", o.get("density").asText()));
        }
        if (o.has("majority")) {
            args.addAll(List.of("--majority-sign", o.get("majority").asText().toLowerCase(Locale.ROOT)));
        }
        if (o.has("seed")) {
            args.addAll(List.of("--seed", o.get("seed").asText()));
        }
        if (o.has("lam")) {
            args.addAll(List.of("--lambda", o.get("lam").asText()));
        }
        Object[] r = CombineCases.run(args);
        assertEquals(0, r[0], (String) r[1]);
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint base = Checkpoint.open(CombineCases.model(c));
             SafetensorsFile expected = SafetensorsFile.open(CombineCases.ROOT.resolve("dense").resolve(name).resolve("expected.safetensors"))) {
            int adapted = 0;
            for (Map.Entry<String, TensorInfo> e : base.tensors().entrySet()) {
                TensorInfo mine = ours.tensor(e.getKey());
                assertNotNull(mine, e.getKey());
                TensorInfo want = expected.tensor(e.getKey());
                if (want == null) {
                    assertArrayEquals(CombineCases.bits(base.fileOf(e.getKey()), e.getValue()), CombineCases.bits(ours.fileOf(e.getKey()), mine),
                            e.getKey() + " is not adapted and must keep the base's bytes");
                    continue;
                }
                adapted++;
                int[] w = CombineCases.bits(expected, want);
                int[] g = CombineCases.bits(ours.fileOf(e.getKey()), mine);
                for (int i = 0; i < w.length; i++) {
                    if (w[i] != g[i]) {
                        assertEquals(Integer.toHexString(w[i]), Integer.toHexString(g[i]), name + " " + e.getKey() + " element " + i);
                    }
                }
            }
            assertEquals(expected.tensors().size(), adapted, "every tensor of the reference is in the base");
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"ties_total", "dare_ties", "magnitude_prune"})
    void theBytesDoNotDependOnTheThreadCountOrTheBlockSize(String name) throws Exception {
        JsonNode c = CombineCases.caseJson("dense", name);
        JsonNode o = c.get("options");
        CombineMethod method = CombineMethod.parse(o.get("method").asText(), CombineMethod.forMerge());
        List<Double> weights = new ArrayList<>();
        c.get("weights").forEach(w -> weights.add(w.asDouble()));
        Combination how = Combination.of(method, weights.size(), weights, o.get("density").asDouble(),
                Combination.MajoritySign.valueOf(o.path("majority").asText("total").toUpperCase(Locale.ROOT)), o.path("lam").asDouble(1.0),
                o.path("seed").asLong(0), 0, null);
        List<LoraAdapter> adapters = new ArrayList<>();
        List<Map<String, String>> trees = new ArrayList<>();
        try (Checkpoint base = Checkpoint.open(CombineCases.model(c))) {
            for (JsonNode a : c.get("adapters")) {
                adapters.add(LoraAdapter.open(CombineCases.ROOT.resolve("adapters").resolve(a.asText())));
            }
            int[][] runs = {{1, 128}, {3, Backend.DEFAULT_BLOCK_BYTES}, {2, 1000}};
            for (int[] run : runs) {
                MergePlan plan = Planner.plan(base, adapters, PlanOptions.defaults(), how);
                Path out = tmp.resolve("out-" + run[0] + "-" + run[1]);
                try (CpuBackend backend = new CpuBackend(run[0]); AtomicOutput o2 = AtomicOutput.create(out, false, List.of(CombineCases.ROOT))) {
                    MergeRunner.run(plan, backend, o2, new MergeRunner.Options(false, run[1]), Progress.silent());
                }
                trees.add(TinyModels.hashTree(out));
            }
        } finally {
            for (LoraAdapter a : adapters) {
                a.close();
            }
        }
        assertEquals(trees.get(0), trees.get(1), "1 thread and 1-row blocks against 3 threads and 8 MiB blocks");
        assertEquals(trees.get(0), trees.get(2));
    }
}
