package org.loramerge.batch;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.plan.CombineMethod;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ManifestTest {
    @Test
    void linesBecomeEntriesWithMergesOptionsAndCommentsAndBlankLinesAreSkipped() throws Exception {
        Manifest m = Manifest.parse("""
                # customers
                {"base": "llama", "adapter": "a", "out": "merged/a", "dtype": "bf16", "max_shard_size": "500MB", "verify": true}

                {"base": "llama", "adapters": ["a", "b"], "combine": "ties", "density": 0.4, "weights": [1, 0.5], "out": "merged/ab", "device": "cuda:1"}
                """, "merges.jsonl");
        assertEquals(List.of(), m.problems());
        assertEquals(2, m.entries().size());
        ManifestEntry a = m.entries().get(0);
        assertEquals(2, a.line());
        assertEquals(List.of("a"), a.adapters());
        assertNull(a.combination());
        assertEquals("bf16", a.options().dtype());
        assertEquals(500_000_000L, a.options().maxShardSize());
        assertEquals(Manifest.DEFAULT_VERIFY_ROWS, a.options().verifyRows());
        assertNull(a.options().device(), "a line that names no device leaves it to the batch");
        ManifestEntry ab = m.entries().get(1);
        assertEquals(4, ab.line());
        assertEquals(CombineMethod.TIES, ab.combination().method());
        assertEquals(List.of(1.0, 0.5), ab.combination().weights());
        assertEquals(0.4, ab.combination().density());
        assertEquals("cuda:1", ab.options().device());
    }

    @Test
    void aBadLineIsAProblemNamingItsLineAndKeyAndTheOthersStillParse() throws Exception {
        Manifest m = Manifest.parse("""
                {"base": "llama", "adapter": "a", "out": "o1"}
                {"base": "llama", "adapter": "a", "out": "o2"
                {"base": "llama", "adapter": "a", "out": "o3", "dtpye": "bf16"}
                {"base": "llama", "adapter": "a", "out": "o4", "dtype": "bf17"}
                {"base": "llama", "adapters": ["a", "b"], "out": "o5"}
                {"base": "llama", "adapters": ["a", "b"], "combine": "ties", "out": "o6"}
                {"base": "llama", "adapter": "a", "out": "o7", "verify": "some"}
                {"base": "llama", "out": "o8"}
                {"base": "llama", "adapter": "a", "out": "o9", "density": 0.5}
                """, "m.jsonl");
        assertEquals(List.of(1), m.entries().stream().map(ManifestEntry::line).toList());
        assertEquals(List.of(2, 3, 4, 5, 6, 7, 8, 9), m.problems().stream().map(ManifestProblem::line).toList());
        List<String> msgs = m.problems().stream().map(ManifestProblem::message).toList();
        assertTrue(msgs.get(0).startsWith("m.jsonl:2: not a JSON object"), msgs.get(0));
        assertTrue(msgs.get(1).startsWith("m.jsonl:3: unknown key \"dtpye\"") && msgs.get(1).contains("dtype"), msgs.get(1));
        assertTrue(msgs.get(2).startsWith("m.jsonl:4: \"dtype\" bf17: expected auto"), msgs.get(2));
        assertTrue(msgs.get(3).contains("\"combine\" METHOD"), msgs.get(3));
        assertTrue(msgs.get(4).contains("\"combine\" ties needs \"density\" D"), msgs.get(4));
        assertTrue(msgs.get(5).contains("\"verify\" some"), msgs.get(5));
        assertTrue(msgs.get(6).contains("names no adapter"), msgs.get(6));
        assertTrue(msgs.get(7).contains("add \"combine\" METHOD"), msgs.get(7));
    }

    @Test
    void twoLinesWritingOneOutputRefuseTheManifestNamingBothLines() {
        ManifestException e = assertThrows(ManifestException.class, () -> Manifest.parse("""
                {"base": "llama", "adapter": "a", "out": "merged/a"}
                {"base": "llama", "adapter": "b", "out": "merged/b"}
                {"base": "llama", "adapter": "c", "out": "merged/./a/"}
                """, "m.jsonl"));
        assertTrue(e.getMessage().startsWith("m.jsonl: lines 1 and 3 both write merged/./a/"), e.getMessage());
        assertEquals(3, e.exitCode().code());
    }

    @Test
    void uriOutputsNestedByPathPrefixRefuseTheManifestButSiblingsWithACommonPrefixDoNot() throws Exception {
        ManifestException e = assertThrows(ManifestException.class, () -> Manifest.parse("""
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/x", "out": "hdfs://nn/merged/a/"}
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/y", "out": "hdfs://nn/merged/a/y"}
                """, "m.jsonl"));
        assertTrue(e.getMessage().startsWith("m.jsonl: lines 1 and 2 write nested outputs"), e.getMessage());
        assertEquals(3, e.exitCode().code());
        assertEquals(2, Manifest.parse("""
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/x", "out": "hdfs://nn/merged/a"}
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/y", "out": "hdfs://nn/merged/ab"}
                """, "m.jsonl").entries().size());
        ManifestException input = assertThrows(ManifestException.class, () -> Manifest.parse("""
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/x", "out": "hdfs://nn/merged/a"}
                {"base": "hdfs://nn/models/llama", "adapter": "hdfs://nn/a/y", "out": "hdfs://nn/models"}
                """, "m.jsonl"));
        assertTrue(input.getMessage().contains("line 1 reads hdfs://nn/models/llama, which lies inside line 2's output"), input.getMessage());
    }

    @Test
    void aReadManifestComparesOutputsResolvedAgainstItsFolder(@TempDir Path dir) throws Exception {
        Path file = dir.resolve("m.jsonl");
        Files.writeString(file, "{\"base\": \"llama\", \"adapter\": \"a\", \"out\": \"merged\"}\n"
                + "{\"base\": \"llama\", \"adapter\": \"b\", \"out\": \"" + dir.resolve("merged") + "\"}\n");
        ManifestException e = assertThrows(ManifestException.class, () -> Manifest.read(file));
        assertTrue(e.getMessage().contains("lines 1 and 2"), e.getMessage());
    }

    @Test
    void theIdIgnoresKeyOrderSpacingAliasesAndTheDeviceButNotWhatTheOutputHolds() throws Exception {
        String id = Manifest.parse("{\"base\": \"llama\", \"adapter\": \"a\", \"out\": \"o\"}", "m").entries().get(0).id();
        assertEquals(16, id.length());
        assertEquals(id, Manifest.parse("\n\n{\"out\":\"o\",\"adapter\":\"a\",\"base\":\"llama\",\"device\":\"cpu\",\"threads\":2}", "m")
                .entries().get(0).id());
        assertNotEquals(id, Manifest.parse("{\"base\": \"llama\", \"adapter\": \"a\", \"out\": \"o\", \"dtype\": \"f32\"}", "m").entries().get(0).id());
        assertEquals(Manifest.parse("{\"base\": \"llama\", \"adapter\": \"a\", \"out\": \"o\", \"dtype\": \"bfloat16\"}", "m").entries().get(0).id(),
                Manifest.parse("{\"base\": \"llama\", \"adapter\": \"a\", \"out\": \"o\", \"dtype\": \"BF16\"}", "m").entries().get(0).id(),
                "a dtype's aliases are one dtype");
        assertNotEquals(id, Manifest.parse("{\"base\": \"llama\", \"adapter\": \"b\", \"out\": \"o\"}", "m").entries().get(0).id());
    }

    @Test
    void anEntrysIdRelativeToItsManifestsFolderStaysTheSameWhenTheFolderMoves() throws Exception {
        String a = Manifest.parse("{\"base\": \"/models/llama\", \"adapter\": \"./a\", \"out\": \"/data/batch/merged/a\"}", "m")
                .entries().get(0).relativeTo(Path.of("/data/batch")).id();
        ManifestEntry moved = Manifest.parse("{\"base\": \"/models/llama\", \"adapter\": \"a\", \"out\": \"/srv/moved/merged/a\"}", "m")
                .entries().get(0).relativeTo(Path.of("/srv/moved"));
        assertEquals("merged/a", moved.out());
        assertEquals("/models/llama", moved.base(), "a location outside the folder stays absolute");
        assertEquals(a, moved.id());
    }

    @Test
    void resolvingAnEntryAnchorsRelativePathsAtTheManifestsFolderAndKeepsUris() throws Exception {
        ManifestEntry e = Manifest.parse("{\"base\": \"/models/llama\", \"adapter\": \"a\", \"out\": \"hdfs://nn/merged/a\"}", "m")
                .entries().get(0).resolve(Path.of("/data/batch"));
        assertEquals("/models/llama", e.base());
        assertEquals(List.of("/data/batch/a"), e.adapters());
        assertEquals("hdfs://nn/merged/a", e.out());
    }
}
