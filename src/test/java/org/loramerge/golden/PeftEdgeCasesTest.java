package org.loramerge.golden;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.cli.Main;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.CliRun;
import org.loramerge.testutil.FixtureCases;

/**
 * PEFT's targeting and tied-embedding rules at their edges (scripts/fixtures/make_peft_edge_fixtures.py, PEFT 0.21), and
 * vision-language models whose adapters name tensors as transformers loads them (make_vlm_fixtures.py):
 * loramerge's merge has the tensors PEFT's merge_and_unload() + save_pretrained() wrote, each within one unit in the last place of
 * PEFT's (PEFT rounds the sum W + s·B·A from float32, loramerge from the exact value), and the same tie_word_embeddings.
 */
class PeftEdgeCasesTest {
    private static final Path RESOURCES = Paths.get("src/test/resources");
    private static final List<String> ROOTS = List.of("peft_edges", "vlm");
    private static final ObjectMapper JSON = new ObjectMapper();

    @TempDir
    Path tmp;

    static Stream<String> cases() throws IOException {
        List<String> all = new ArrayList<>();
        for (String root : ROOTS) {
            FixtureCases.names(RESOURCES.resolve(root)).forEach(c -> all.add(root + "/" + c));
        }
        return all.stream();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void theMergeIsPeftsWithinAnUlpWithTheSameTensorsAndTie(String name) throws Exception {
        Path dir = RESOURCES.resolve(name);
        JsonNode c = JSON.readTree(dir.resolve("case.json").toFile());
        Path out = tmp.resolve("out");
        CliRun run = CliRun.of(() -> Main.run("merge", "--base", dir.resolve("base").toString(), "--adapter", dir.resolve("adapter").toString(),
                "--out", out.toString(), "--device", "cpu", "--quiet"));
        assertEquals(0, run.code(), c.path("shows").asText() + "\n" + run.both());
        JsonNode ourConfig = JSON.readTree(out.resolve("config.json").toFile());
        assertEquals(c.path("peft_tie_word_embeddings").asBoolean(), ourConfig.path("tie_word_embeddings").asBoolean(true), "tie_word_embeddings");
        try (Checkpoint ours = Checkpoint.open(out); Checkpoint peft = Checkpoint.open(dir.resolve("peft"))) {
            assertEquals(new TreeSet<>(peft.tensors().keySet()), new TreeSet<>(ours.tensors().keySet()), "the tensors PEFT's merge wrote");
            for (Map.Entry<String, TensorInfo> e : peft.tensors().entrySet()) {
                TensorInfo p = e.getValue();
                TensorInfo o = ours.tensor(e.getKey());
                assertEquals(p.dtype(), o.dtype(), e.getKey());
                assertArrayEquals(p.shape(), o.shape(), e.getKey());
                long worst = maxUlps(read(peft, p), read(ours, o), p.dtype());
                assertTrue(worst <= 1, name + ": " + e.getKey() + " is " + worst + " ulps from PEFT's");
            }
        }
    }

    private static ByteBuffer read(Checkpoint c, TensorInfo t) throws IOException {
        SafetensorsFile f = c.fileOf(t.name());
        return f.readAll(t).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    }

    /** The largest distance in units in the last place between two tensors of a float dtype (their bytes must be equal otherwise). */
    private static long maxUlps(ByteBuffer a, ByteBuffer b, DType dtype) {
        assertEquals(a.remaining(), b.remaining());
        if (!dtype.isMergeable()) {
            return a.equals(b) ? 0 : Long.MAX_VALUE;
        }
        int size = dtype.sizeInBytes();
        long worst = 0;
        for (long i = 0; i < a.remaining() / size; i++) {
            worst = Math.max(worst, Math.abs(FixtureCases.ordered(a, i, size) - FixtureCases.ordered(b, i, size)));
        }
        return worst;
    }
}
