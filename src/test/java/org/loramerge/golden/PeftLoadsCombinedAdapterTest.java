package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * PEFT 0.21 itself loads what {@code combine} writes, without missing or unexpected keys, and its
 * merge of it is PEFT's merge of PEFT's own combination (scripts/fixtures/check_combined_adapter.py).
 * Needs the interpreter of scripts/fixtures/requirements-fixtures.txt, named by the environment
 * variable PYTHON; skipped without it.
 */
class PeftLoadsCombinedAdapterTest {
    @TempDir
    Path tmp;

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"cat", "linear", "ties_frequency", "magnitude_prune", "embedding_cat", "conv1d_linear", "different_modules", "svd",
            "ties_svd", "embedding_svd", "conv1d_svd"})
    void peftLoadsTheCombinedAdapterAndMergesItAsItsOwnCombination(String name) throws Exception {
        String python = System.getenv("PYTHON");
        assumeTrue(python != null && !python.isBlank(), "PYTHON is not set: no interpreter with PEFT to check the adapter with");
        JsonNode c = CombineCases.caseJson("peft", name);
        JsonNode kw = c.get("add_weighted_adapter");
        Path out = tmp.resolve("combined");
        List<String> args = new ArrayList<>(List.of("combine", "--quiet", "--base", CombineCases.model(c).toString(), "--out", out.toString(),
                "--combine", kw.get("combination_type").asText()));
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
        Object[] r = CombineCases.run(args);
        assertEquals(0, r[0], (String) r[1]);
        Process p = new ProcessBuilder(python, "scripts/fixtures/check_combined_adapter.py", "--model", CombineCases.model(c).toString(),
                "--adapter", out.toString(), "--expected", CombineCases.ROOT.resolve("peft").resolve(name).resolve("merged.safetensors").toString())
                .redirectErrorStream(true).start();
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(5, TimeUnit.MINUTES), "check_combined_adapter.py did not finish");
        assertEquals(0, p.exitValue(), name + ": PEFT does not load or merge the combined adapter as its own combination:\n" + output);
    }
}
