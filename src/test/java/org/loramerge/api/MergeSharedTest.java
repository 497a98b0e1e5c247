package org.loramerge.api;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.errors.ExitCode;

/** {@link LoraMerge#mergeShared}: several merges of one base in one pass, each with the bytes of its own merge, failures kept apart. */
class MergeSharedTest {
    static final Path COMBINE = Path.of("src/test/resources/combine");
    static final Path LLAMA = COMBINE.resolve("models/llama_f32");

    @TempDir
    Path dir;

    static Path adapter(String name) {
        return COMBINE.resolve("adapters").resolve(name);
    }

    static LoraMerge.SharedMerge shared(String adapter, Path out, MergeOptions o) {
        return new LoraMerge.SharedMerge(List.of(adapter(adapter)), null, out, o);
    }

    @Test
    void eachMergeOfASharedPassHasTheBytesOfItsOwnMergeAndAFailingOneFailsAlone() throws Exception {
        MergeOptions o = MergeOptions.defaults().withDevice("cpu").withDtype("bf16").withMaxShardSize(5_000);
        Files.createDirectories(dir.resolve("taken"));
        List<LoraMerge.SharedOutcome> outcomes = LoraMerge.mergeShared(LLAMA, List.of(
                shared("qv_r4", dir.resolve("shared/qv"), o.withVerifyRows(4)),
                shared("gpt2_attn_r4", dir.resolve("shared/gpt2"), o),
                shared("dora_r4", dir.resolve("shared/dora"), o),
                shared("kv_r8", dir.resolve("taken"), o),
                shared("emb_r4", dir.resolve("shared/emb"), o)), o);
        assertEquals(5, outcomes.size());
        assertEquals(ExitCode.BAD_INPUT, outcomes.get(1).error().exitCode(), "an adapter for another model");
        assertEquals(ExitCode.OUTPUT, outcomes.get(3).error().exitCode(), "an output that exists");
        for (int k : new int[] {0, 2, 4}) {
            assertNotNull(outcomes.get(k).result(), "merge " + k);
            assertNull(outcomes.get(k).error());
            assertFalse(outcomes.get(k).notRun());
        }
        assertEquals(4, outcomes.get(0).result().verifiedRows(), "the merge's own verification ran");
        assertTrue(outcomes.get(0).result().shards() > 1, "a sharded output");
        assertSame(LoraMerge.merge(LLAMA, adapter("qv_r4"), dir.resolve("alone/qv"), o.withVerifyRows(4)), dir.resolve("shared/qv"));
        assertSame(LoraMerge.merge(LLAMA, adapter("dora_r4"), dir.resolve("alone/dora"), o), dir.resolve("shared/dora"));
        assertSame(LoraMerge.merge(LLAMA, adapter("emb_r4"), dir.resolve("alone/emb"), o), dir.resolve("shared/emb"));
        try (Stream<Path> s = Files.list(dir.resolve("shared"))) {
            assertEquals(List.of("dora", "emb", "qv"), s.map(p -> p.getFileName().toString()).sorted().toList(), "nothing of the failed merges");
        }
        try (Stream<Path> s = Files.list(dir.resolve("taken"))) {
            assertEquals(0, s.count(), "an existing folder is left as it was");
        }
    }

    private static void assertSame(MergeResult alone, Path shared) throws IOException {
        Map<String, byte[]> a = files(Path.of(alone.output()));
        Map<String, byte[]> b = files(shared);
        assertEquals(a.keySet(), b.keySet());
        for (String name : a.keySet()) {
            assertArrayEquals(a.get(name), b.get(name), name);
        }
    }

    private static Map<String, byte[]> files(Path root) throws IOException {
        Map<String, byte[]> out = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.filter(Files::isRegularFile).toList()) {
                out.put(root.relativize(p).toString(), Files.readAllBytes(p));
            }
        }
        return out;
    }
}
