package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.nio.file.attribute.FileTime;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.select.Backends;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** {@code loramerge batch} end to end on the CPU engine: tiny merges, failing lines, re-runs and a killed run resumed. */
class BatchCliTest {
    static final Path COMBINE = Paths.get("src/test/resources/combine").toAbsolutePath();
    static final Path LLAMA = COMBINE.resolve("models/llama_f32");
    static final Path GPT2_ADAPTER = COMBINE.resolve("adapters/gpt2_attn_r4");

    @TempDir
    Path dir;

    static Path adapter(String name) {
        return COMBINE.resolve("adapters").resolve(name);
    }

    /** A manifest line as JSON. */
    static String line(Path base, Path adapter, String out, String extra) {
        return "{\"base\": \"" + base + "\", \"adapter\": \"" + adapter + "\", \"out\": \"" + out + "\"" + (extra.isEmpty() ? "" : ", " + extra) + "}";
    }

    /** Three good lines: two adapters on one base (one written in bf16) and a ties combination of two more. */
    List<String> goodLines() {
        return List.of(
                line(LLAMA, adapter("qv_r4"), "merged/qv", ""),
                line(LLAMA, adapter("mlp_r4"), "merged/mlp", "\"dtype\": \"bf16\""),
                "{\"base\": \"" + LLAMA + "\", \"adapters\": [\"" + adapter("qv_r4") + "\", \"" + adapter("qv_r4b") + "\"], \"combine\": \"ties\", "
                        + "\"density\": 0.5, \"weights\": [1, 0.5], \"out\": \"merged/ties\"}");
    }

    Path manifest(List<String> lines) throws IOException {
        Path m = dir.resolve("merges.jsonl");
        Files.writeString(m, String.join("\n", lines) + "\n");
        return m;
    }

    static CliRun.Result batch(Path manifest, String... extra) {
        List<String> args = new ArrayList<>(List.of("batch", "--manifest", manifest.toString(), "--devices", "cpu"));
        args.addAll(List.of(extra));
        return CliRun.run(args.toArray(new String[0]));
    }

    /** What {@code loramerge merge} writes for the same line. */
    Path reference(String name, String... args) {
        Path out = dir.resolve("reference").resolve(name);
        List<String> a = new ArrayList<>(List.of("merge", "--device", "cpu", "--quiet", "--out", out.toString()));
        a.addAll(List.of(args));
        CliRun.Result r = CliRun.run(a.toArray(new String[0]));
        assertEquals(0, r.code(), r.err());
        return out;
    }

    Path referenceQv() {
        return reference("qv", "--base", LLAMA.toString(), "--adapter", adapter("qv_r4").toString());
    }

    Path referenceMlp() {
        return reference("mlp", "--base", LLAMA.toString(), "--adapter", adapter("mlp_r4").toString(), "--dtype", "bf16");
    }

    Path referenceTies() {
        return reference("ties", "--base", LLAMA.toString(), "--adapter", adapter("qv_r4").toString(), "--adapter", adapter("qv_r4b").toString(),
                "--combine", "ties", "--density", "0.5", "--weights", "1,0.5");
    }

    /** Every file of {@code a} and {@code b}, by relative name, with its bytes. */
    static void assertSameFolder(Path expected, Path actual) throws IOException {
        Map<String, byte[]> e = files(expected);
        Map<String, byte[]> a = files(actual);
        assertEquals(e.keySet(), a.keySet(), "the files of " + actual);
        for (String name : e.keySet()) {
            assertArrayEquals(e.get(name), a.get(name), name + " differs from what loramerge merge writes");
        }
    }

    static Map<String, byte[]> files(Path root) throws IOException {
        Map<String, byte[]> out = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.filter(Files::isRegularFile).toList()) {
                out.put(root.relativize(p).toString(), Files.readAllBytes(p));
            }
        }
        return out;
    }

    /** Names in {@code folder} other than those given: leftovers of an output (partials, owner records). */
    static List<String> names(Path folder) throws IOException {
        try (Stream<Path> s = Files.list(folder)) {
            return s.map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    @Test
    void goodLinesAreWrittenAsMergeWritesThemAndBadLinesAreReportedByNumberWhileTheOthersGoOn() throws Exception {
        List<String> lines = new ArrayList<>();
        lines.add("# three good merges and three bad lines");
        lines.addAll(goodLines());                                                   // lines 2, 3, 4
        lines.add("{\"base\": \"" + LLAMA + "\", \"adapter\": ");                    // 5: malformed
        lines.add(line(LLAMA, dir.resolve("no-such-adapter"), "merged/missing", ""));   // 6: missing folder
        lines.add(line(LLAMA, GPT2_ADAPTER, "merged/gpt2", ""));                     // 7: an adapter for another model
        CliRun.Result r = batch(manifest(lines));
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        assertSameFolder(referenceQv(), dir.resolve("merged/qv"));
        assertSameFolder(referenceMlp(), dir.resolve("merged/mlp"));
        assertSameFolder(referenceTies(), dir.resolve("merged/ties"));
        assertEquals(List.of("mlp", "qv", "ties"), names(dir.resolve("merged")), "nothing of the failed lines, not even a partial folder");
        assertTrue(r.err().contains("batch: line 5 failed (exit 3): " + dir.resolve("merges.jsonl") + ":5: not a JSON object"), r.err());
        assertTrue(r.err().contains("batch: line 6 failed (exit 3): ") && r.err().contains("no-such-adapter: no such folder"), r.err());
        assertTrue(r.err().contains("batch: line 7 failed (exit 3): "), r.err());
        assertTrue(r.err().contains("batch: finished: 6/6 finished (3 done, 0 skipped, 3 failed)"), r.err());
    }

    @Test
    void theJsonSummaryHasEveryLinesStatusChecksumEngineAndTheMergesOwnSummaryOrItsError() throws Exception {
        List<String> lines = new ArrayList<>(goodLines());
        lines.add(line(LLAMA, GPT2_ADAPTER, "merged/gpt2", ""));
        CliRun.Result r = batch(manifest(lines), "--json", "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        assertEquals("", r.err(), "--quiet prints nothing on stderr");
        JsonNode j = new ObjectMapper().readTree(r.out());
        JsonNode merges = j.get("merges");
        assertEquals(4, merges.size());
        for (int i = 0; i < 3; i++) {
            JsonNode m = merges.get(i);
            assertEquals(i + 1, m.get("line").asInt());
            assertEquals("done", m.get("status").asText());
            assertEquals("cpu", m.get("device").asText());
            assertTrue(m.get("engine").asText().startsWith("cpu"), m.toString());
            Path out = Path.of(m.get("out").asText());
            assertEquals(checksum(out), m.get("checksum").asText(), "the checksum is the SHA-256 of the output's sha256sum listing");
            assertEquals(m.get("bytes").asLong(), m.get("summary").get("bytes_written").asLong());
            assertTrue(m.get("summary").get("tensors_merged").asLong() > 0, m.toString());
            assertTrue(m.get("error").isNull() && m.get("exit_code").isNull());
        }
        JsonNode bad = merges.get(3);
        assertEquals("failed", bad.get("status").asText());
        assertEquals(3, bad.get("exit_code").asInt());
        assertTrue(bad.get("error").asText().contains(GPT2_ADAPTER.toString()), bad.toString());
        assertTrue(bad.get("summary").isNull() && bad.get("checksum").isNull());
        JsonNode totals = j.get("totals");
        assertEquals(4, totals.get("lines").asInt());
        assertEquals(3, totals.get("done").asInt());
        assertEquals(0, totals.get("skipped").asInt());
        assertEquals(1, totals.get("failed").asInt());
        assertEquals(3, totals.get("exit_code").asInt());
        try (Stream<Path> records = Files.list(dir.resolve("merges.jsonl.state"))) {
            assertEquals(3, records.filter(p -> p.toString().endsWith(".json")).count(), "a record per done line, none for the failed one");
        }
    }

    static String checksum(Path out) throws Exception {
        StringBuilder listing = new StringBuilder();
        for (Map.Entry<String, byte[]> f : files(out).entrySet()) {
            listing.append(HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(f.getValue()))).append("  ").append(f.getKey()).append('\n');
        }
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(listing.toString().getBytes(StandardCharsets.UTF_8)));
    }

    @Test
    void strictRefusesTheWholeBatchListingEveryBadLineAndWritesNothing() throws Exception {
        List<String> lines = new ArrayList<>(goodLines());
        lines.add("{\"base\": \"" + LLAMA + "\", \"adapter\": \"a\", \"out\": \"merged/x\", \"dtpye\": \"bf16\"}");
        lines.add(line(dir.resolve("no-such-base"), adapter("qv_r4"), "merged/y", ""));
        Path m = manifest(lines);
        CliRun.Result r = batch(m, "--strict");
        CliRun.assertBadInput(r, "--strict");
        assertTrue(r.err().contains(m + ":4: unknown key \"dtpye\"") && r.err().contains(m + ":5: \"base\": ") && r.err().contains("no-such-base"),
                r.err());
        assertFalse(Files.exists(dir.resolve("merged")), "nothing ran");
        assertFalse(Files.exists(dir.resolve("merges.jsonl.state")), "no state was written");
    }

    @Test
    void twoLinesWritingOneOutputAreRefusedBeforeAnythingRuns() throws Exception {
        List<String> lines = new ArrayList<>(goodLines());
        lines.add(line(LLAMA, adapter("kv_r8"), "merged/./qv", ""));
        CliRun.Result r = batch(manifest(lines));
        CliRun.assertBadInput(r, "lines 1 and 4 both write merged/./qv");
        assertFalse(Files.exists(dir.resolve("merged")), "nothing ran");
    }

    @Test
    void anOutputInsideAnotherLinesOutputIsRefusedNamingBothLinesBeforeAnythingRuns() throws Exception {
        List<String> lines = new ArrayList<>(goodLines());
        lines.add(line(LLAMA, adapter("kv_r8"), "merged/qv/sub", ""));
        CliRun.Result r = batch(manifest(lines));
        CliRun.assertBadInput(r, "lines 1 and 4 write nested outputs");
        assertFalse(Files.exists(dir.resolve("merged")), "nothing ran");

        lines.set(3, line(LLAMA, adapter("kv_r8"), "merged", ""));
        CliRun.Result outer = batch(manifest(lines));
        CliRun.assertBadInput(outer, "lines 1 and 4 write nested outputs");
        assertFalse(Files.exists(dir.resolve("merged")), "nothing ran");
    }

    @Test
    void anOutputThatIsHoldsOrLiesInsideALinesBaseOrAdapterIsRefusedBeforeAnythingRuns() throws Exception {
        Path base = dir.resolve("models/base");
        copyTree(LLAMA, base);
        String first = line(base, adapter("kv_r8"), "merged/kv", "");
        CliRun.assertBadInput(batch(manifest(List.of(first, line(LLAMA, adapter("qv_r4"), "models/base/merged", "")))),
                "line 1 reads " + base + ", which holds line 2's output");
        CliRun.assertBadInput(batch(manifest(List.of(first, line(LLAMA, adapter("qv_r4"), "models/base", "\"overwrite\": true")))),
                "line 1 reads " + base + ", which is line 2's output");
        CliRun.assertBadInput(batch(manifest(List.of(first, line(LLAMA, adapter("qv_r4"), "models", "")))),
                "line 1 reads " + base + ", which lies inside line 2's output");
        assertFalse(Files.exists(dir.resolve("merged")), "nothing ran");
        assertFalse(Files.exists(base.resolve("merged")), "nothing ran");
        assertSameFolder(LLAMA, base);
    }

    static void copyTree(Path from, Path to) throws IOException {
        try (Stream<Path> walk = Files.walk(from)) {
            for (Path p : walk.toList()) {
                Path t = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) {
                    Files.createDirectories(t);
                } else {
                    Files.copy(p, t);
                }
            }
        }
    }

    @Test
    void aReRunSkipsFinishedOutputsWithoutTouchingThemAndRedoesADeletedOrTamperedOne() throws Exception {
        Path m = manifest(goodLines());
        assertEquals(0, batch(m).code());
        Map<String, Object> before = stamps(dir.resolve("merged"));
        CliRun.Result again = batch(m, "--json");
        assertEquals(0, again.code(), again.err());
        JsonNode j = new ObjectMapper().readTree(again.out());
        assertEquals(3, j.get("totals").get("skipped").asInt(), again.out());
        for (JsonNode x : j.get("merges")) {
            assertEquals("skipped", x.get("status").asText());
            assertEquals(checksum(Path.of(x.get("out").asText())), x.get("checksum").asText());
        }
        assertEquals(before, stamps(dir.resolve("merged")), "a skipped output is not rewritten (same inode and modification time)");

        deleteTree(dir.resolve("merged/qv"));
        Path config = dir.resolve("merged/mlp/config.json");
        Files.writeString(config, Files.readString(config).replace("\"llama\"", "\"tampered\""));
        CliRun.Result third = batch(m, "--json", "--quiet");
        assertEquals(0, third.code(), third.err());
        JsonNode k = new ObjectMapper().readTree(third.out());
        assertEquals(List.of("done", "done", "skipped"), k.get("merges").findValues("status").stream().map(JsonNode::asText).toList());
        assertSameFolder(referenceQv(), dir.resolve("merged/qv"));
        assertSameFolder(referenceMlp(), dir.resolve("merged/mlp"));
        assertEquals(before.get("ties/model.safetensors"), stamps(dir.resolve("merged")).get("ties/model.safetensors"));
    }

    @Test
    void anAdapterOrBaseChangedInPlaceIsMergedAgainInsteadOfSkippingTheOldOutput() throws Exception {
        Path a = dir.resolve("adapters/a");
        copyTree(adapter("qv_r4"), a);
        Path base = dir.resolve("models/base");
        copyTree(LLAMA, base);
        Path m = manifest(List.of(line(base, a, "merged/a", "")));
        assertEquals(0, batch(m, "--quiet").code());
        Path before = reference("before", "--base", base.toString(), "--adapter", a.toString());
        assertSameFolder(before, dir.resolve("merged/a"));

        // the adapter retrained in place: same folder, other weights
        Files.copy(adapter("mlp_r4").resolve("adapter_model.safetensors"), a.resolve("adapter_model.safetensors"),
                StandardCopyOption.REPLACE_EXISTING);
        Files.copy(adapter("mlp_r4").resolve("adapter_config.json"), a.resolve("adapter_config.json"),
                StandardCopyOption.REPLACE_EXISTING);
        CliRun.Result r = batch(m, "--json", "--quiet");
        assertEquals(0, r.code(), r.err());
        assertEquals("done", new ObjectMapper().readTree(r.out()).get("merges").get(0).get("status").asText(), r.out());
        Path retrained = reference("retrained", "--base", base.toString(), "--adapter", a.toString());
        assertFalse(Arrays.equals(Files.readAllBytes(before.resolve("model.safetensors")),
                Files.readAllBytes(retrained.resolve("model.safetensors"))), "the new adapter changes the merge");
        assertSameFolder(retrained, dir.resolve("merged/a"));

        // the base's config touched in place: a later modification time
        Path config = base.resolve("config.json");
        Files.setLastModifiedTime(config, FileTime.fromMillis(Files.getLastModifiedTime(config).toMillis() + 5_000));
        CliRun.Result again = batch(m, "--json", "--quiet");
        assertEquals(0, again.code(), again.err());
        assertEquals("done", new ObjectMapper().readTree(again.out()).get("merges").get(0).get("status").asText(), again.out());
        CliRun.Result third = batch(m, "--json", "--quiet");
        assertEquals("skipped", new ObjectMapper().readTree(third.out()).get("merges").get(0).get("status").asText(), third.out());
    }

    @Test
    void aProjectFolderMovedWithItsManifestStateAndOutputsSkipsWhatItWroteBefore() throws Exception {
        Path project = dir.resolve("project");
        Files.createDirectories(project);
        Files.writeString(project.resolve("merges.jsonl"), line(LLAMA, adapter("qv_r4"), "merged/qv", "") + "\n"
                + line(LLAMA, adapter("mlp_r4"), project.resolve("merged/mlp").toString(), "") + "\n");
        assertEquals(0, batch(project.resolve("merges.jsonl"), "--quiet").code());
        Path moved = dir.resolve("moved");
        Files.move(project, moved);
        Files.writeString(moved.resolve("merges.jsonl"), line(LLAMA, adapter("qv_r4"), "merged/qv", "") + "\n"
                + line(LLAMA, adapter("mlp_r4"), moved.resolve("merged/mlp").toString(), "") + "\n");
        CliRun.Result r = batch(moved.resolve("merges.jsonl"), "--json", "--quiet");
        assertEquals(0, r.code(), r.err());
        assertEquals(List.of("skipped", "skipped"),
                new ObjectMapper().readTree(r.out()).get("merges").findValues("status").stream().map(JsonNode::asText).toList(), r.out());
        assertSameFolder(referenceQv(), moved.resolve("merged/qv"));
    }

    @Test
    void anOutputTheBatchDoesNotSeeWhenItChecksFailsItsLineNamingTheLinesOverwriteOptionNotMergesFlag() throws Exception {
        // a dangling link: the batch's check (which follows links) sees nothing there, the merge finds the output taken
        Files.createDirectories(dir.resolve("merged"));
        Files.createSymbolicLink(dir.resolve("merged/qv"), dir.resolve("nowhere"));
        CliRun.Result r = batch(manifest(goodLines()), "--json", "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code());
        JsonNode first = new ObjectMapper().readTree(r.out()).get("merges").get(0);
        assertEquals(4, first.get("exit_code").asInt(), first.toString());
        String error = first.get("error").asText();
        assertTrue(error.contains("add \"overwrite\": true to line 1") && !error.contains("--overwrite"), error);
        assertTrue(Files.isSymbolicLink(dir.resolve("merged/qv")), "the link is left alone");
    }

    @Test
    void anOutputTheBatchDidNotWriteFailsItsLineUnlessTheLineSaysOverwrite() throws Exception {
        Files.createDirectories(dir.resolve("merged/qv"));
        Files.writeString(dir.resolve("merged/qv/keep.txt"), "someone else's");
        List<String> lines = new ArrayList<>(goodLines());
        CliRun.Result r = batch(manifest(lines), "--json", "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code());
        JsonNode first = new ObjectMapper().readTree(r.out()).get("merges").get(0);
        assertEquals("failed", first.get("status").asText());
        assertEquals(4, first.get("exit_code").asInt(), "the output exists: merge's exit code 4");
        assertTrue(first.get("error").asText().contains("exists and this batch did not write it")
                && first.get("error").asText().contains("\"overwrite\": true to line 1"), first.toString());
        assertEquals("someone else's", Files.readString(dir.resolve("merged/qv/keep.txt")));

        lines.set(0, line(LLAMA, adapter("qv_r4"), "merged/qv", "\"overwrite\": true"));
        CliRun.Result again = batch(manifest(lines), "--quiet");
        assertEquals(0, again.code(), again.err());
        assertSameFolder(referenceQv(), dir.resolve("merged/qv"));
    }

    @Test
    void aKilledBatchResumedSkipsFinishedMergesAndRedoesTheInterruptedOneLeavingNoPartialFolder() throws Exception {
        Path m = manifest(goodLines());
        assertEquals(0, batch(m).code());
        Path state = dir.resolve("merges.jsonl.state");
        // as a batch killed while writing line 2 leaves it: line 1 done, line 2's record "running" and its partial
        // output (owned by a process that died), line 3 not started
        Path mlp = dir.resolve("merged/mlp");
        Path mlpRecord = recordOf(state, mlp);
        JsonNode record = new ObjectMapper().readTree(mlpRecord.toFile());
        ((ObjectNode) record).put("status", "running").putObject("files");
        Files.writeString(mlpRecord, record.toString());
        deleteTree(mlp);
        Files.delete(recordOf(state, dir.resolve("merged/ties")));
        deleteTree(dir.resolve("merged/ties"));
        killedWriter(mlp);
        assertTrue(names(dir.resolve("merged")).stream().anyMatch(n -> n.contains("loramerge-partial")), "the killed writer's partial folder");
        Map<String, Object> qvBefore = stamps(dir.resolve("merged/qv"));

        CliRun.Result r = batch(m, "--json", "--quiet");
        assertEquals(0, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        assertEquals(List.of("skipped", "done", "done"), j.get("merges").findValues("status").stream().map(JsonNode::asText).toList());
        assertEquals(qvBefore, stamps(dir.resolve("merged/qv")));
        assertSameFolder(referenceMlp(), mlp);
        assertSameFolder(referenceTies(), dir.resolve("merged/ties"));
        assertEquals(List.of("mlp", "qv", "ties"), names(dir.resolve("merged")), "no partial folder or owner record is left");
    }

    @Test
    void aBatchProcessKilledMidwayAndRunAgainSkipsWhatItRecordedAndWritesTheRestAsMergeDoes() throws Exception {
        List<String> adapters = List.of("qv_r4", "qv_r4b", "qkvo_r4", "mlp_r4", "kv_r8", "dora_r4", "emb_r4", "rslora_r4");
        List<String> lines = new ArrayList<>();
        for (String a : adapters) {
            lines.add(line(LLAMA, adapter(a), "merged/" + a, ""));
        }
        Path m = manifest(lines);
        Path state = dir.resolve("merges.jsonl.state");
        List<String> cmd = List.of(Paths.get(System.getProperty("java.home"), "bin", "java").toString(), "-cp", System.getProperty("java.class.path"),
                Main.class.getName(), "batch", "--manifest", m.toString(), "--devices", "cpu", "--no-shared-read", "--quiet");
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD).start();
        try {
            long deadline = System.nanoTime() + 120_000_000_000L;
            while (doneRecords(state).isEmpty() && p.isAlive() && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
        } finally {
            p.destroyForcibly(); // SIGKILL: no shutdown hook runs
            assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        }
        Map<String, String> recorded = doneRecords(state);
        assertFalse(recorded.isEmpty(), "the batch recorded no finished merge before it was killed");
        assertTrue(recorded.size() < adapters.size(), "the batch was killed before it finished: " + recorded.keySet());

        CliRun.Result r = batch(m, "--json", "--quiet");
        assertEquals(0, r.code(), r.err());
        JsonNode merges = new ObjectMapper().readTree(r.out()).get("merges");
        for (JsonNode x : merges) {
            String out = x.get("out").asText();
            assertEquals(recorded.containsKey(out) ? "skipped" : "done", x.get("status").asText(), x.toString());
            String a = Path.of(out).getFileName().toString();
            assertSameFolder(reference(a, "--base", LLAMA.toString(), "--adapter", adapter(a).toString()), Path.of(out));
        }
        // a writer killed between creating its owner record and locking it leaves an empty record that AtomicOutput
        // leaves alone for a minute (it may be a live writer's); anything else of the killed run is cleaned up
        List<String> left = new ArrayList<>();
        for (String name : names(dir.resolve("merged"))) {
            if (!(name.contains(".loramerge-lock-") && Files.size(dir.resolve("merged").resolve(name)) == 0)) {
                left.add(name);
            }
        }
        assertEquals(adapters.stream().sorted().toList(), left, "no partial folder or owner record is left");
    }

    /** Output folder (a record's, resolved against the manifest's folder) to checksum of every record marked done in {@code state}. */
    static Map<String, String> doneRecords(Path state) throws IOException {
        Map<String, String> out = new TreeMap<>();
        if (!Files.isDirectory(state)) {
            return out;
        }
        try (Stream<Path> s = Files.list(state)) {
            for (Path p : s.filter(f -> f.getFileName().toString().endsWith(".json") && !f.getFileName().toString().startsWith(".")).toList()) {
                JsonNode n = new ObjectMapper().readTree(p.toFile());
                if ("done".equals(n.get("status").asText())) {
                    out.put(state.getParent().resolve(n.get("out").asText()).toString(), n.get("checksum").asText());
                }
            }
        }
        return out;
    }

    /** The state record that names {@code out}. */
    static Path recordOf(Path state, Path out) throws IOException {
        try (Stream<Path> s = Files.list(state)) {
            for (Path p : s.filter(f -> f.toString().endsWith(".json")).toList()) {
                if (state.getParent().resolve(new ObjectMapper().readTree(p.toFile()).get("out").asText()).equals(out)) {
                    return p;
                }
            }
        }
        throw new AssertionError("no state record for " + out);
    }

    /** Starts a process that begins writing {@code out} through AtomicOutput, and kills it (SIGKILL) once it is writing. */
    static void killedWriter(Path out) throws Exception {
        List<String> cmd = List.of(Paths.get(System.getProperty("java.home"), "bin", "java").toString(), "-cp", System.getProperty("java.class.path"),
                "org.loramerge.pipeline.AtomicOutputChild", "hold", out.toString());
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        try {
            String first = new String(p.getInputStream().readNBytes(5), StandardCharsets.UTF_8);
            assertEquals("READY", first, "the writing process did not start");
        } finally {
            p.destroyForcibly();
            assertTrue(p.waitFor(60, TimeUnit.SECONDS));
        }
    }

    /** Per file under {@code root}: its inode and modification time. */
    static Map<String, Object> stamps(Path root) throws IOException {
        Map<String, Object> out = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(root)) {
            for (Path p : walk.filter(Files::isRegularFile).toList()) {
                FileTime t = Files.getLastModifiedTime(p);
                out.put(root.relativize(p).toString(), Files.getAttribute(p, "unix:ino") + "@" + t.toInstant());
            }
        }
        return out;
    }

    static void deleteTree(Path p) throws IOException {
        try (Stream<Path> walk = Files.walk(p)) {
            for (Path x : walk.sorted(Comparator.reverseOrder()).toList()) {
                Files.delete(x);
            }
        }
    }

    /** Lines of one base: plain, DoRA, embedding, rsLoRA and a combination, the kinds a shared pass handles differently. */
    List<String> oneBaseLines() {
        List<String> lines = new ArrayList<>();
        for (String a : List.of("qv_r4", "qkvo_r4", "mlp_r4", "kv_r8", "dora_r4", "emb_r4", "rslora_r4")) {
            lines.add(line(LLAMA, adapter(a), "merged/" + a, ""));
        }
        lines.add("{\"base\": \"" + LLAMA + "\", \"adapters\": [\"" + adapter("qv_r4") + "\", \"" + adapter("qv_r4b") + "\"], \"combine\": \"ties\", "
                + "\"density\": 0.5, \"weights\": [1, 0.5], \"out\": \"merged/ties\"}");
        return lines;
    }

    @Test
    void linesOfOneBaseMergedInOneSharedPassWriteTheBytesOfSeparateMerges() throws Exception {
        Path m = manifest(oneBaseLines());
        CliRun.Result shared = batch(m, "--json");
        assertEquals(0, shared.code(), shared.err());
        assertTrue(shared.err().contains("batch: lines 1, 2, 3, 4, 5, 6, 7, 8: merging in one pass over " + LLAMA), shared.err());
        assertFalse(shared.err().contains(": merging into "), "no line fell back to a merge of its own:\n" + shared.err());
        for (String a : List.of("qv_r4", "qkvo_r4", "mlp_r4", "kv_r8", "dora_r4", "emb_r4", "rslora_r4")) {
            assertSameFolder(reference(a, "--base", LLAMA.toString(), "--adapter", adapter(a).toString()), dir.resolve("merged").resolve(a));
        }
        assertSameFolder(referenceTies(), dir.resolve("merged/ties"));
        JsonNode j = new ObjectMapper().readTree(shared.out());
        for (JsonNode x : j.get("merges")) {
            assertEquals("done", x.get("status").asText());
            assertTrue(x.get("summary").get("tensors_merged").asLong() > 0, x.toString());
        }

        Path separate = dir.resolve("separate");
        Files.createDirectories(separate);
        Path m2 = separate.resolve("merges.jsonl");
        Files.writeString(m2, Files.readString(m));
        CliRun.Result alone = batch(m2, "--no-shared-read");
        assertEquals(0, alone.code(), alone.err());
        assertFalse(alone.err().contains("in one pass"), alone.err());
        assertSameFolder(dir.resolve("merged"), separate.resolve("merged"));
    }

    @Test
    void aLineThatFailsInASharedPassFailsAloneWithItsOwnReasonAndTheOthersAreWritten() throws Exception {
        List<String> lines = new ArrayList<>(oneBaseLines().subList(0, 3));
        lines.add(line(LLAMA, GPT2_ADAPTER, "merged/gpt2", ""));
        lines.add(line(LLAMA, adapter("qv_r4"), "merged/f16", "\"dtype\": \"f16\", \"max_shard_size\": \"10KB\""));
        lines.add(line(LLAMA, adapter("kv_r8"), "merged/f16b", "\"dtype\": \"f16\", \"max_shard_size\": \"10KB\""));
        CliRun.Result r = batch(manifest(lines), "--json");
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        JsonNode merges = new ObjectMapper().readTree(r.out()).get("merges");
        assertEquals(List.of("done", "done", "done", "failed", "done", "done"),
                merges.findValues("status").stream().map(JsonNode::asText).toList());
        assertTrue(merges.get(3).get("error").asText().contains("is this adapter for another model?"), merges.get(3).toString());
        assertTrue(r.err().contains("batch: lines 5, 6: merging in one pass"), "sharded f16 outputs share their own pass:\n" + r.err());
        assertSameFolder(referenceQv(), dir.resolve("merged/qv_r4"));
        assertSameFolder(reference("f16", "--base", LLAMA.toString(), "--adapter", adapter("qv_r4").toString(), "--dtype", "f16",
                "--max-shard-size", "10KB"), dir.resolve("merged/f16"));
        assertSameFolder(reference("f16b", "--base", LLAMA.toString(), "--adapter", adapter("kv_r8").toString(), "--dtype", "f16",
                "--max-shard-size", "10KB"), dir.resolve("merged/f16b"));
        assertEquals(List.of("f16", "f16b", "mlp_r4", "qkvo_r4", "qv_r4"), names(dir.resolve("merged")));
    }

    @Test
    void devicesAllWithoutAGpuIsRefusedWithExit7AndAnUnknownDeviceIsAUsageError() throws Exception {
        Path m = manifest(goodLines());
        assumeTrue(Backends.cudaDeviceCount() == 0, "a GPU is here");
        CliRun.Result r = CliRun.run("batch", "--manifest", m.toString(), "--devices", "all");
        assertEquals(ExitCodes.DEVICE, r.code(), r.err());
        assertTrue(r.err().contains("--devices cpu"), r.err());
        CliRun.Result u = CliRun.run("batch", "--manifest", m.toString(), "--devices", "gpu0");
        assertEquals(ExitCodes.USAGE, u.code(), u.err());
        assertFalse(Files.exists(dir.resolve("merged")));
    }
}
