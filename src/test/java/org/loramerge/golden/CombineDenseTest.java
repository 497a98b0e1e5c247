package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

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

    static java.util.stream.Stream<String> cases() throws Exception {
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
}
