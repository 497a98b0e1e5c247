package org.loramerge.golden;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.CliRun;
import org.loramerge.verify.UlpDistance;

/**
 * {@code unmerge} on every golden fixture, twice: out of loramerge's own merge (exactly rounded, so
 * every element must land within one ulp of the merged value from the base, F32 included) and out
 * of PEFT's merge_and_unload() output (within one ulp for BF16 and F16, where PEFT rounds once;
 * measured only for F32, where PEFT's fp32 arithmetic is itself off by many ulps). The cases whose
 * merge cannot be undone from the merged model alone are refused with their reason, and come back
 * equal to the base when it is given.
 */
class GoldenUnmergeTest {
    /** Fixtures refused without --base, and a word of the reason given. */
    private static final Map<String, String> REFUSED = Map.of(
            "bias_all", "replaced",
            "dora_conv1d", "DoRA",
            "dora_conv2d", "DoRA",
            "dora_linear", "DoRA",
            "modules_to_save_resized", "replaced",
            "tied_lm_head", "tied embeddings",
            "tied_lm_head_ensure_tying", "tied embeddings",
            "trainable_tokens", "trainable tokens");
    /** loramerge unties lm_head when its delta differs from the embedding's (FORMATS.md §7), so its own merge of this case can be undone. */
    private static final String UNTIED_BY_LORAMERGE = "tied_lm_head";
    private static final List<String> REPORT = new ArrayList<>();

    @TempDir
    Path tmp;

    static Stream<String> cases() throws Exception {
        return GoldenFixtureTest.cases();
    }

    private static CliRun unmerge(Path merged, Path adapter, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("unmerge", "--merged", merged.toString(), "--adapter", adapter.toString(), "--out",
                out.toString(), "--device", "cpu", "--quiet", "--threads", "2"));
        args.addAll(List.of(extra));
        return CliRun.of(() -> Main.run(args.toArray(new String[0])));
    }

    /** Every tensor of {@code out} against the base: those the unmerge computed within {@code maxMergedUlp}, all others equal. */
    private static UlpDistance.Result distance(Path out, Path base, Path merged) throws Exception {
        try (Checkpoint o = Checkpoint.open(out); Checkpoint b = Checkpoint.open(base); Checkpoint m = Checkpoint.open(merged)) {
            List<String> names = new ArrayList<>();
            for (TensorInfo t : o.tensors().values()) {
                TensorInfo bt = b.tensor(t.name());
                if (bt != null && m.tensor(t.name()) != null && t.dtype().isMergeable() && bt.numElements() == t.numElements()
                        && m.tensor(t.name()).numElements() == t.numElements()) {
                    names.add(t.name());
                }
            }
            return UlpDistance.measure(o, b, m, names);
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void unmergeGivesTheBaseBackWithinOneUlpOfTheMergedValueOrRefusesWithTheReason(String name) throws Exception {
        Path fixture = GoldenFixtureTest.FIXTURES.resolve(name);
        Path base = fixture.resolve("base");
        Path adapter = fixture.resolve("adapter");
        Path ours = tmp.resolve("merged");
        CliRun m = CliRun.of(() -> Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", ours.toString(),
                "--device", "cpu", "--quiet"));
        assertEquals(0, m.code(), m::both);
        String dtype = new ObjectMapper().readTree(fixture.resolve("case.json").toFile()).path("base_dtype").asText();
        StringBuilder line = new StringBuilder(String.format(Locale.ROOT, "| %s | %s |", name, dtype));
        for (Path merged : List.of(ours, fixture.resolve("peft"))) {
            boolean peft = merged != ours;
            Path out = tmp.resolve(peft ? "from-peft" : "from-ours");
            CliRun r = unmerge(merged, adapter, out);
            if (REFUSED.containsKey(name) && (peft || !name.equals(UNTIED_BY_LORAMERGE))) {
                assertEquals(3, r.code(), r::both);
                assertTrue(r.err().contains(REFUSED.get(name)) && r.err().contains("--base"), r::both);
                assertFalse(Files.exists(out));
                CliRun withBase = unmerge(merged, adapter, out, "--base", base.toString());
                assertEquals(0, withBase.code(), withBase::both);
            } else {
                assertEquals(0, r.code(), r::both);
            }
            UlpDistance.Result d = distance(out, base, merged);
            boolean exactMerge = !peft || dtype.equals("bf16") || dtype.equals("f16");
            if (exactMerge) {
                assertTrue(d.worstMergedUlp() <= 1, name + (peft ? " (PEFT's merge)" : "") + ": " + d.worstMergedUlp() + " ulps of the merged value");
            }
            line.append(String.format(Locale.ROOT, " %d of %d equal, %d beyond 1 ulp, worst %.4g ulp (%.4g merged ulp) |", d.equal(), d.elements(),
                    d.beyondOneUlp(), d.worstUlp(), d.worstMergedUlp()));
        }
        synchronized (REPORT) {
            REPORT.add(line.toString());
        }
    }

    @AfterAll
    static void writeReport() throws Exception {
        List<String> lines = new ArrayList<>(List.of("# unmerge of the golden fixtures: distance of every tensor to the base",
                "", "| fixture | dtype | out of loramerge's merge | out of PEFT's merge |", "| --- | --- | --- | --- |"));
        lines.addAll(REPORT.stream().sorted().toList());
        Files.createDirectories(Path.of("target"));
        Files.write(Path.of("target/golden-unmerge-report.md"), lines);
    }
}
