package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.writeAdapter;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.io.UncheckedIOException;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels;

/** The command line's habits end to end: where output and errors go, what a script can parse, and what a user types. */
class CliHabitsTest {
    static final Path FIXTURES = Path.of("src/test/resources/fixtures");
    private static final Pattern SNAKE = Pattern.compile("[a-z][a-z0-9_]*");

    @TempDir
    Path dir;

    private Path base;
    private Path adapter;

    @BeforeEach
    void writeInputs() {
        base = TinyModels.writeTinyLlama(dir.resolve("models/base"));
        adapter = writeAdapter(dir.resolve("models/adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), qProjAdapter(4));
    }

    private static InspectAndVerifyCliTest.Run run(String... args) {
        return InspectAndVerifyCliTest.run(args);
    }

    private InspectAndVerifyCliTest.Run merge(Path adapterDir, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", base.toString(), "--adapter", adapterDir.toString(),
                "--out", out.toString(), "--device", "cpu"));
        args.addAll(List.of(extra));
        return run(args.toArray(new String[0]));
    }

    // ------------------------------------------------------------------ --out

    @Test
    void anExistingOutIsRefusedBeforeAnythingIsPlannedOrStarted() throws IOException {
        Path out = Files.createDirectories(dir.resolve("out"));
        // the adapter is broken too: the output check must come first, so the answer is exit 4, not 3
        Path broken = writeAdapter(dir.resolve("models/broken"), "{ not json", List.of());
        InspectAndVerifyCliTest.Run r = merge(broken, out);
        assertEquals(ExitCodes.OUTPUT, r.code(), r.err());
        assertFalse(r.err().contains("merging"), "nothing was planned or started: " + r.err());
        assertTrue(r.err().contains("--overwrite"), r.err());
    }

    @Test
    void missingParentFoldersOfOutAreCreated() {
        Path out = dir.resolve("runs/2026/merged");
        InspectAndVerifyCliTest.Run r = merge(adapter, out, "--quiet");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(Files.isRegularFile(out.resolve("model.safetensors")));
    }

    @Test
    void parentFoldersCreatedForAFailedMergeAreRemovedAgain() {
        Path broken = writeAdapter(dir.resolve("models/broken"), "{ not json", List.of());
        InspectAndVerifyCliTest.Run r = merge(broken, dir.resolve("runs/2026/merged"), "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        assertFalse(Files.exists(dir.resolve("runs")), "a failed merge leaves no folder behind");
    }

    @Test
    void noShardIsLargerThanMaxShardSizeAndAShardClosesOnlyWhenTheNextTensorDoesNotFit() throws Exception {
        // the tiny llama holds 560 bytes of tensors, none over 128: with a 300-byte limit transformers' rule (a shard is
        // closed when the next tensor would take it past the limit) splits them, and no shard may pass 300 bytes
        long limit = 300;
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(adapter, out, "--quiet", "--max-shard-size", Long.toString(limit));
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode index = new ObjectMapper().readTree(out.resolve("model.safetensors.index.json").toFile());
        assertEquals(560, index.path("metadata").path("total_size").asLong());
        List<String> order = new ArrayList<>();
        Map<String, Long> sizes = new HashMap<>();
        try (SafetensorsFile b = SafetensorsFile.open(base.resolve("model.safetensors"))) {
            for (TensorInfo t : b.tensors()) {
                order.add(t.name());
                sizes.put(t.name(), t.sizeInBytes());
            }
        }
        // the shards transformers' rule gives for the tensors in the base's order
        List<List<String>> expected = new ArrayList<>();
        long size = 0;
        for (String name : order) {
            if (expected.isEmpty() || size + sizes.get(name) > limit) {
                expected.add(new ArrayList<>());
                size = 0;
            }
            expected.get(expected.size() - 1).add(name);
            size += sizes.get(name);
        }
        assertTrue(expected.size() >= 2, "the limit must split this model: " + expected);
        Map<String, String> weightMap = new TreeMap<>();
        index.path("weight_map").fields().forEachRemaining(e -> weightMap.put(e.getKey(), e.getValue().asText()));
        Map<String, String> expectedMap = new TreeMap<>();
        for (int i = 0; i < expected.size(); i++) {
            for (String name : expected.get(i)) {
                expectedMap.put(name, TinyModels.shardName(i, expected.size()));
            }
        }
        assertEquals(expectedMap, weightMap, "the index");
        for (int i = 0; i < expected.size(); i++) {
            Path shard = out.resolve(TinyModels.shardName(i, expected.size()));
            long bytes = 0;
            try (SafetensorsFile f = SafetensorsFile.open(shard)) {
                for (TensorInfo t : f.tensors()) {
                    bytes += t.sizeInBytes();
                }
            }
            assertTrue(bytes <= limit, shard.getFileName() + " holds " + bytes + " bytes of tensors, over --max-shard-size " + limit);
        }
    }

    @Test
    void weightsAnAdapterLeavesUnchangedKeepTheirBitsNegativeZerosIncluded() throws Exception {
        // q_proj of layer 0: row 2 (whose lora_B row is zero) and column 5 (whose lora_A column is zero) get an exactly zero
        // delta; their -0.0 elements must stay -0.0, as README promises that such an element keeps W's bits
        double[] w = TinyModels.values(64, 3);
        for (int j = 0; j < 8; j++) {
            w[2 * 8 + j] = j % 2 == 0 ? -0.0 : w[2 * 8 + j];
            w[j * 8 + 5] = j % 3 == 0 ? -0.0 : w[j * 8 + 5];
        }
        List<TinyModels.Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        tensors.set(0, new TinyModels.Tensor(TinyModels.q(0) + ".weight", DType.BF16, new long[] {8, 8}, TinyModels.bf16(w)));
        Path signed = TinyModels.writeModel(dir.resolve("models/signed"), tensors);
        double[] a = TinyModels.values(4 * 8, 5);
        double[] b = TinyModels.values(8 * 4, 7);
        for (int k = 0; k < 4; k++) {
            a[k * 8 + 5] = 0;
            b[2 * 4 + k] = 0;
            a[k * 8 + 1] = 0.25; // the other columns do change
        }
        List<TinyModels.Tensor> pair = List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + TinyModels.q(0) + ".lora_A.weight", DType.F32, new long[] {4, 8}, TinyModels.f32(a)),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + TinyModels.q(0) + ".lora_B.weight", DType.F32, new long[] {8, 4}, TinyModels.f32(b)));
        Path zeroRows = writeAdapter(dir.resolve("models/zero-rows"), loraConfig(4, 8, "[\"" + TinyModels.q(0) + "\"]", ""), pair);
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = run("merge", "--base", signed.toString(), "--adapter", zeroRows.toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        byte[] before = TinyModels.bf16(w);
        byte[] after;
        try (SafetensorsFile f = SafetensorsFile.open(out.resolve("model.safetensors"))) {
            ByteBuffer bytes = f.readAll(f.tensor(TinyModels.q(0) + ".weight"));
            after = new byte[bytes.remaining()];
            bytes.get(after);
        }
        int negativeZeros = 0;
        int changed = 0;
        for (int i = 0; i < 64; i++) {
            int was = (before[2 * i] & 0xFF) | (before[2 * i + 1] & 0xFF) << 8;
            int now = (after[2 * i] & 0xFF) | (after[2 * i + 1] & 0xFF) << 8;
            if (i / 8 == 2 || i % 8 == 5) {
                assertEquals(String.format("0x%04x", was), String.format("0x%04x", now), "element [" + i / 8 + ", " + i % 8 + "] has a zero delta");
                negativeZeros += was == 0x8000 ? 1 : 0;
            } else {
                changed += was != now ? 1 : 0;
            }
        }
        assertTrue(negativeZeros >= 6, "the case holds negative zeros: " + negativeZeros);
        assertTrue(changed > 0, "the adapter changes the other elements");
    }

    // ------------------------------------------------------------------ errors

    @Test
    void aUsageErrorPrintsTheErrorAndOneLinePointingToHelp() {
        InspectAndVerifyCliTest.Run r = run("merge", "--base", base.toString(), "--adapter", adapter.toString());
        assertEquals(ExitCodes.USAGE, r.code());
        List<String> lines = r.err().strip().lines().toList();
        assertEquals(2, lines.size(), r.err());
        assertTrue(lines.get(0).contains("--out"), r.err());
        assertEquals("Run 'loramerge merge --help' for the options.", lines.get(1));
        InspectAndVerifyCliTest.Run bad = run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out",
                dir.resolve("o").toString(), "--dtype", "int8");
        assertEquals(ExitCodes.USAGE, bad.code());
        assertEquals(2, bad.err().strip().lines().count(), bad.err());
    }

    @Test
    void underJsonEveryCommandPrintsItsFailureAsAJsonErrorObjectOnStdout() throws IOException {
        Path missing = dir.resolve("no-such-model");
        String[][] commands = {
                {"merge", "--base", missing.toString(), "--adapter", adapter.toString(), "--out", dir.resolve("o1").toString(), "--json"},
                {"verify", "--base", missing.toString(), "--adapter", adapter.toString(), "--merged", base.toString(), "--json"},
                {"inspect", missing.toString(), "--json"},
                {"quantize", "--base", missing.toString(), "--out", dir.resolve("o2").toString(), "--json"}};
        for (String[] c : commands) {
            InspectAndVerifyCliTest.Run r = run(c);
            assertEquals(ExitCodes.BAD_INPUT, r.code(), String.join(" ", c) + ": " + r.err());
            JsonNode error = new ObjectMapper().readTree(r.out()).get("error");
            assertNotNull(error, c[0] + " printed no error object: " + r.out());
            assertEquals(3, error.get("code").asInt());
            assertEquals("BAD_INPUT", error.get("kind").asText());
            assertTrue(error.get("message").asText().contains(missing.toString()), error.toString());
            assertEquals(missing.toString(), error.get("file").asText(), c[0]);
        }
        InspectAndVerifyCliTest.Run usage = run("merge", "--json", "--base", base.toString());
        assertEquals("USAGE", new ObjectMapper().readTree(usage.out()).get("error").get("kind").asText(), usage.out());
    }

    @Test
    void anAdapterForAnotherModelPrintsOneLinePerKindOfProblemWithACount() {
        List<TinyModels.Tensor> tensors = new ArrayList<>();
        for (int layer = 0; layer < 40; layer++) {
            tensors.addAll(TinyModels.loraPair("model.layers." + layer + ".self_attn.q_proj", 4, 8, 8));
        }
        Path other = writeAdapter(dir.resolve("models/other"), loraConfig(4, 8, "[\"q_proj\"]", ""), tensors);
        InspectAndVerifyCliTest.Run r = merge(other, dir.resolve("out"), "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        List<String> problems = r.err().lines().filter(l -> l.startsWith("  - ")).toList();
        assertEquals(1, problems.size(), "38 modules that the 2-layer base lacks, one line: " + r.err());
        assertTrue(problems.get(0).contains("the same for 37 more, 38 in all") && problems.get(0).contains("model.layers.3.self_attn.q_proj"),
                problems.get(0));
    }

    @Test
    void aConv1dWarningIsPrintedOnceForTheWholeModel() {
        Path c = FIXTURES.resolve("gpt2_conv1d");
        Path noFlag = dir.resolve("gpt2-adapter");
        try {
            Files.createDirectories(noFlag);
            Files.copy(c.resolve("adapter/adapter_model.safetensors"), noFlag.resolve("adapter_model.safetensors"));
            String cfg = Files.readString(c.resolve("adapter/adapter_config.json")).replace("\"fan_in_fan_out\": true", "\"fan_in_fan_out\": false");
            Files.writeString(noFlag.resolve("adapter_config.json"), cfg);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        InspectAndVerifyCliTest.Run r = run("merge", "--base", c.resolve("base").toString(), "--adapter", noFlag.toString(), "--out",
                dir.resolve("out").toString(), "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        List<String> warnings = r.err().lines().filter(l -> l.contains("fan_in_fan_out is false")).toList();
        assertEquals(1, warnings.size(), r.err());
        assertTrue(warnings.get(0).contains("in all"), warnings.get(0));
    }

    /**
     * A square weight of an architecture loramerge does not know as Conv1D: the shapes cannot tell nn.Linear from
     * Conv1D, so fan_in_fan_out decides, as in PEFT. GPT-2's c_proj under another model_type merges to GPT-2's bytes
     * with the flag, and to other bytes (the update transposed) without it.
     */
    @Test
    void fanInFanOutDecidesTheLayoutOfASquareWeightOfAnUnknownArchitecture() throws IOException {
        Path c = FIXTURES.resolve("gpt2_conv1d");
        Path base = dir.resolve("custom-base");
        Files.createDirectories(base);
        for (String f : List.of("model.safetensors", "generation_config.json")) {
            Files.copy(c.resolve("base").resolve(f), base.resolve(f));
        }
        String config = Files.readString(c.resolve("base/config.json"));
        assertTrue(config.contains("\"model_type\": \"gpt2\""), "the fixture's config names gpt2");
        Files.writeString(base.resolve("config.json"), config.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"my_gpt\""));
        Path noFlag = dir.resolve("no-flag-adapter");
        Files.createDirectories(noFlag);
        Files.copy(c.resolve("adapter/adapter_model.safetensors"), noFlag.resolve("adapter_model.safetensors"));
        Files.writeString(noFlag.resolve("adapter_config.json"),
                Files.readString(c.resolve("adapter/adapter_config.json")).replace("\"fan_in_fan_out\": true", "\"fan_in_fan_out\": false"));

        InspectAndVerifyCliTest.Run gpt2 = run("merge", "--base", c.resolve("base").toString(), "--adapter", c.resolve("adapter").toString(),
                "--out", dir.resolve("gpt2").toString(), "--device", "cpu", "--quiet");
        InspectAndVerifyCliTest.Run flagged = run("merge", "--base", base.toString(), "--adapter", c.resolve("adapter").toString(),
                "--out", dir.resolve("flagged").toString(), "--device", "cpu", "--quiet");
        InspectAndVerifyCliTest.Run unflagged = run("merge", "--base", base.toString(), "--adapter", noFlag.toString(),
                "--out", dir.resolve("unflagged").toString(), "--device", "cpu", "--quiet");
        assertEquals(ExitCodes.OK, gpt2.code(), gpt2.err());
        assertEquals(ExitCodes.OK, flagged.code(), flagged.err());
        assertEquals(ExitCodes.OK, unflagged.code(), unflagged.err());
        byte[] expected = Files.readAllBytes(dir.resolve("gpt2/model.safetensors"));
        assertTrue(java.util.Arrays.equals(expected, Files.readAllBytes(dir.resolve("flagged/model.safetensors"))),
                "fan_in_fan_out true: the square c_proj merges as Conv1D, GPT-2's bytes");
        assertFalse(java.util.Arrays.equals(expected, Files.readAllBytes(dir.resolve("unflagged/model.safetensors"))),
                "fan_in_fan_out false: the square c_proj merges as nn.Linear, the update transposed");
    }

    // ------------------------------------------------------------------ JSON

    @Test
    void everyCommandsJsonUsesSnakeCaseKeys() throws IOException {
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run m = merge(adapter, out, "--json", "--quiet", "--verify");
        assertEquals(ExitCodes.OK, m.code(), m.err());
        InspectAndVerifyCliTest.Run v = run("verify", "--base", base.toString(), "--adapter", adapter.toString(), "--merged", out.toString(), "--json");
        InspectAndVerifyCliTest.Run i = run("inspect", adapter.toString(), "--json");
        InspectAndVerifyCliTest.Run q = run("quantize", "--base", FIXTURES.resolve("linear_bf16/base").toString(), "--out",
                dir.resolve("q").toString(), "--json", "--quiet");
        for (InspectAndVerifyCliTest.Run r : List.of(m, v, i, q)) {
            assertEquals(ExitCodes.OK, r.code(), r.err());
            List<String> bad = new ArrayList<>();
            keys(new ObjectMapper().readTree(r.out()), bad);
            assertEquals(List.of(), bad, r.out());
        }
        JsonNode merged = new ObjectMapper().readTree(m.out());
        assertEquals(2, merged.get("tensors_merged").asInt());
        assertEquals(16, merged.get("verified_rows").asInt());
        // the counts of elements settled at a rounding boundary, by expansion and by decimal arithmetic (scripts/bench reads them)
        JsonNode tensor = merged.get("tensors").get(0);
        assertTrue(tensor.get("exactly_rounded").isIntegralNumber() && tensor.get("exact_fallbacks").isIntegralNumber(), tensor.toString());
    }

    @Test
    void theQuantizedFormatsReportsUseSnakeCaseKeys() throws IOException {
        Path res = Path.of("src/test/resources");
        Path fp8 = res.resolve("fp8/fine_grained_128");
        List<InspectAndVerifyCliTest.Run> runs = new ArrayList<>();
        for (String model : List.of("qlora/dq_bs64/base", "fp8/fine_grained_128/base", "gptq_awq/gptq_v1_4bit_g32_actorder/base")) {
            runs.add(run("inspect", res.resolve(model).toString(), "--json"));
        }
        runs.add(run("merge", "--base", fp8.resolve("base").toString(), "--adapter", fp8.resolve("adapter").toString(), "--out",
                dir.resolve("fp8").toString(), "--to", "fp8", "--device", "cpu", "--json", "--quiet"));
        InspectAndVerifyCliTest.Run q = run("quantize", "--base", FIXTURES.resolve("linear_bf16/base").toString(), "--out",
                dir.resolve("q").toString(), "--quant-type", "fp4", "--json", "--quiet");
        runs.add(q);
        for (InspectAndVerifyCliTest.Run r : runs) {
            assertEquals(ExitCodes.OK, r.code(), r.err());
            List<String> bad = new ArrayList<>();
            keys(new ObjectMapper().readTree(r.out()), bad);
            assertEquals(List.of(), bad, r.out());
        }
        JsonNode inspected = new ObjectMapper().readTree(runs.get(1).out()).get("quantization");
        assertTrue(inspected.get("format").asText().contains("FP8"), inspected.toString());
        assertTrue(inspected.get("weights").get(0).has("description") && inspected.get("weights").get(0).has("tensors"), inspected.toString());
        assertTrue(new ObjectMapper().readTree(runs.get(3).out()).get("requantization").get("codes_changed").isIntegralNumber(), runs.get(3).out());
        assertEquals("fp4", new ObjectMapper().readTree(q.out()).get("quant_type").asText(), q.out());
    }

    /** Keys that are not snake_case; the values of maps keyed by tensor name (verified_worst_ulp, metadata) are not keys of ours. */
    private static void keys(JsonNode n, List<String> bad) {
        if (n.isObject()) {
            for (Iterator<Map.Entry<String, JsonNode>> it = n.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> e = it.next();
                if (!SNAKE.matcher(e.getKey()).matches()) {
                    bad.add(e.getKey());
                }
                if (!e.getKey().equals("verified_worst_ulp") && !e.getKey().equals("metadata")) {
                    keys(e.getValue(), bad);
                }
            }
        } else if (n.isArray()) {
            n.forEach(x -> keys(x, bad));
        }
    }

    // ------------------------------------------------------------------ output in text mode

    @Test
    void verifyWritesItsReportOnStdoutAndMergeVerifyShowsItsResult() {
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run m = merge(adapter, out, "--verify");
        assertEquals(ExitCodes.OK, m.code(), m.err());
        assertTrue(m.err().contains("verify: PASSED: 2 adapted tensors, 16 sampled rows each recomputed exactly, unchanged tensors compared completely, worst error 0 ulp"), m.err());
        InspectAndVerifyCliTest.Run v = run("verify", "--base", base.toString(), "--adapter", adapter.toString(), "--merged", out.toString());
        assertEquals(ExitCodes.OK, v.code(), v.err());
        assertTrue(v.out().startsWith("verify: PASSED:"), v.out());
        assertEquals("", v.err());
    }

    // ------------------------------------------------------------------ options, version, launcher, completion

    @Test
    void dtypeAliasesAreListedInTheHelpAndAccepted() {
        InspectAndVerifyCliTest.Run help = run("merge", "--help");
        assertTrue(help.out().replaceAll("\\s+", " ").contains("also accepted: fp32, float32, float, fp16, float16, half, bfloat16"), help.out());
        for (String alias : List.of("FP32", "float16", "bfloat16")) {
            InspectAndVerifyCliTest.Run r = merge(adapter, dir.resolve("out-" + alias), "--dtype", alias, "--quiet");
            assertEquals(ExitCodes.OK, r.code(), alias + ": " + r.err());
        }
    }

    @Test
    void theShardSizeHelpSaysWhichTransformersDefaultItFollows() {
        String help = run("merge", "--help").out().replaceAll("\\s+", " ");
        assertTrue(help.contains("Default 5GB: the default of transformers' save_pretrained from 4.35 through 4.x") && help.contains("transformers 5"), help);
    }

    @Test
    void versionIsTheBuildsVersion() throws IOException {
        Matcher m = Pattern.compile("<artifactId>loramerge</artifactId>\\s*<version>([^<]+)</version>").matcher(Files.readString(Path.of("pom.xml")));
        assertTrue(m.find());
        assertEquals("loramerge " + m.group(1), run("--version").out().strip());
    }

    @Test
    void theLauncherWorksThroughASymlinkAndRunsTheJavaOfJavaHome() throws Exception {
        // a stand-in JAVA_HOME whose java prints its arguments, and a jar file for it to be given
        Path javaHome = dir.resolve("jdk");
        Files.createDirectories(javaHome.resolve("bin"));
        Path java = Files.writeString(javaHome.resolve("bin/java"), "#!/bin/sh\necho \"fake java: $*\"\n");
        java.toFile().setExecutable(true);
        Path jar = Files.writeString(dir.resolve("some.jar"), "not a real jar");
        Path bin = Files.createDirectories(dir.resolve("bin"));
        Path link = Files.createSymbolicLink(bin.resolve("loramerge"), Path.of("loramerge").toAbsolutePath());
        String viaJavaHome = launch(link, Map.of("JAVA_HOME", javaHome.toString(), "LORAMERGE_JAR", jar.toString()), "--version");
        assertEquals("fake java: -Xmx2g -jar " + jar + " --version", viaJavaHome.strip());
        // without LORAMERGE_JAR the jar is looked for beside the real launcher, not beside the link
        String notBuilt = launch(link, Map.of("JAVA_HOME", javaHome.toString(), "LORAMERGE_JAR", dir.resolve("missing.jar").toString()), "--version");
        assertTrue(notBuilt.contains("missing.jar not found"), notBuilt);
        Path repo = Path.of("").toAbsolutePath();
        String defaultJar = launchWithout(link, javaHome, "--version");
        assertTrue(defaultJar.contains("fake java: -Xmx2g -jar " + repo.resolve("target/loramerge-cli.jar"))
                || defaultJar.contains(repo.resolve("target/loramerge-cli.jar") + " not found"), defaultJar);
    }

    private static String launch(Path launcher, Map<String, String> env, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("sh", launcher.toString()));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).directory(launcher.getParent().toFile());
        pb.environment().putAll(env);
        Process p = pb.start();
        String text = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        return text;
    }

    private static String launchWithout(Path launcher, Path javaHome, String... args) throws Exception {
        List<String> cmd = new ArrayList<>(List.of("sh", launcher.toString()));
        cmd.addAll(List.of(args));
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).directory(launcher.getParent().toFile());
        pb.environment().remove("LORAMERGE_JAR");
        pb.environment().put("JAVA_HOME", javaHome.toString());
        Process p = pb.start();
        String text = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(30, TimeUnit.SECONDS));
        return text;
    }

    @Test
    void theCompletionScriptAndManPageCoverEveryCommandAndItsOptions() {
        InspectAndVerifyCliTest.Run completion = run("generate-completion");
        assertEquals(ExitCodes.OK, completion.code(), completion.err());
        assertTrue(completion.out().contains("complete -F") && completion.out().contains("--max-shard-size")
                && completion.out().contains("--tolerance"), completion.out());
        InspectAndVerifyCliTest.Run man = run("generate-manpage");
        assertEquals(ExitCodes.OK, man.code(), man.err());
        for (String s : List.of(".TH LORAMERGE 1", ".SS merge", ".SS verify", ".SS inspect", ".SS quantize", "\\-\\-tolerance", "\\-\\-dtype",
                ".SH EXIT STATUS")) {
            assertTrue(man.out().contains(s), s + " missing from the man page");
        }
        assertFalse(run("--help").out().contains("generate-"), "the generators are for the install script, not in the help");
    }
}
