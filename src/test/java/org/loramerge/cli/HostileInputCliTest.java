package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;
import static org.loramerge.cli.CliRun.assertBadInput;
import static org.loramerge.cli.CliRun.merge;
import static org.loramerge.testutil.TinyModels.hashTree;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.replaceWithFifo;
import static org.loramerge.testutil.TinyModels.replaceWithLink;
import static org.loramerge.testutil.TinyModels.writeAdapter;
import static org.loramerge.testutil.TinyModels.writeSparse;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.IntUnaryOperator;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.format.DType;
import org.loramerge.format.InputFolder;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.ShardIndex;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels.Tensor;
import org.loramerge.testutil.TinyModels;

/**
 * Inputs made to hurt the tool (issue 10): each ends with the right exit code and a message that
 * names the file or field, leaves no output behind, and leaves the inputs as they were.
 */
class HostileInputCliTest {
    /** Far longer than any of these commands takes, far shorter than a hang. */
    private static final Duration PROMPTLY = Duration.ofSeconds(20);

    @TempDir
    Path dir;

    private Path models;
    private Path base;
    private Path out;

    @BeforeEach
    void writeInputs() {
        models = dir.resolve("models");
        base = TinyModels.writeTinyLlama(models.resolve("base"));
        out = dir.resolve("merged");
    }

    private Path adapterWith(String extraConfig) {
        return writeAdapter(models.resolve("adapter"), loraConfig(4, 8, "[\"q_proj\"]", extraConfig), qProjAdapter(4));
    }

    // ------------------------------------------------------------------ regular expressions

    @Test
    void rankPatternWithCatastrophicBacktrackingNeitherHangsNorIsAccepted() {
        Path adapter = adapterWith("\"rank_pattern\": {\"(.*){1,32000}[bc]\": 2}");
        Map<String, String> before = hashTree(models);
        CliRun.Result r = assertTimeoutPreemptively(PROMPTLY, () -> merge(base, adapter, out));
        assertBadInput(r, out, adapter.resolve("adapter_config.json"));
        assertTrue(r.err().contains("rank_pattern") && r.err().contains("(.*){1,32000}[bc]"), r::err);
        assertEquals(before, hashTree(models));
    }

    @Test
    void nestedQuantifiersThatHangABacktrackingMatcherMergeInLinearTime() {
        // java.util.regex runs for hours on each module name with these; RE2/J takes milliseconds
        Path adapter = adapterWith("\"rank_pattern\": {\"(.*){1,999}[bc]\": 2}, \"alpha_pattern\": {\"(.*?){20}[bc]\": 1},"
                + " \"exclude_modules\": \"(.*?){20}[bc]\"");
        CliRun.Result r = assertTimeoutPreemptively(PROMPTLY, () -> merge(base, adapter, out));
        assertEquals(ExitCodes.OK, r.code(), r::err);
    }

    @Test
    void backreferenceInAlphaPatternIsRefusedNamingFieldAndKeyAndWhy() {
        Path adapter = adapterWith("\"alpha_pattern\": {\"(q)_proj\\\\1\": 2}");
        CliRun.Result r = merge(base, adapter, out);
        assertBadInput(r, out, adapter.resolve("adapter_config.json"));
        assertTrue(r.err().contains("alpha_pattern") && r.err().contains("(q)_proj\\1") && r.err().contains("backreference"), r::err);
    }

    @Test
    void lookaroundInTargetModulesIsRefusedNamingTheFieldAndWhy() {
        Path adapter = writeAdapter(models.resolve("adapter"), loraConfig(4, 8, "\".*(?<!k)_proj\"", ""), qProjAdapter(4));
        CliRun.Result r = merge(base, adapter, out);
        assertBadInput(r, out, adapter.resolve("adapter_config.json"));
        assertTrue(r.err().contains("target_modules") && r.err().contains("lookaround"), r::err);
    }

    // ------------------------------------------------------------------ adapter_config.json field types

    @Test
    void wronglyTypedConfigFieldsStopTheMergeNamingFieldAndType() {
        String[][] cases = {
                {"\"target_modules\": 123", "target_modules", "Optional[Union[list[str], str]]"},
                {"\"exclude_modules\": 5", "exclude_modules", "Optional[Union[list[str], str]]"},
                {"\"rank_pattern\": \"x\"", "rank_pattern", "Optional[dict]"},
                {"\"alpha_pattern\": [[\"q_proj\", 2]]", "alpha_pattern", "Optional[dict]"},
                {"\"r\": null", "\"r\"", "int"},
                {"\"lora_dropout\": \"x\"", "lora_dropout", "float"},
        };
        for (String[] c : cases) {
            // the field replaces the one loraConfig writes: a JSON object's last duplicate wins, as in Python's json
            Path adapter = writeAdapter(models.resolve("adapter-" + c[1].replace("\"", "")), loraConfig(4, 8, "[\"q_proj\"]", c[0]), qProjAdapter(4));
            Map<String, String> before = hashTree(models);
            CliRun.Result r = merge(base, adapter, out);
            assertBadInput(r, out, adapter.resolve("adapter_config.json"));
            assertTrue(r.err().contains(c[1]) && r.err().contains(c[2]), () -> c[0] + ": " + r.err());
            assertEquals(before, hashTree(models));
        }
    }

    @Test
    void qaloraAdapterIsRefusedWithTheReason() {
        Path adapter = adapterWith("\"use_qalora\": true");
        CliRun.Result r = merge(base, adapter, out);
        assertBadInput(r, out, adapter.resolve("adapter_config.json"));
        assertTrue(r.err().contains("use_qalora") && r.err().contains("pooled"), r::err);
    }

    // ------------------------------------------------------------------ special files, sizes, links

    private Path sharded() {
        return TinyModels.writeShardedModel(models.resolve("sharded"),
                List.of(TinyModels.tinyLlama().subList(0, 3), TinyModels.tinyLlama().subList(3, 7)));
    }

    @Test
    void namedPipeAsAnyInputFileIsRefusedInsteadOfBlocking() {
        assumeTrue(TinyModels.hasMkfifo(), "no mkfifo here");
        Path sharded = sharded();
        Path adapter = adapterWith("");
        Path[] inputs = {sharded.resolve("config.json"), sharded.resolve(ShardIndex.FILE_NAME), sharded.resolve(TinyModels.shardName(1, 2)),
                sharded.resolve("tokenizer.json"), adapter.resolve("adapter_config.json"), adapter.resolve("adapter_model.safetensors")};
        for (Path input : inputs) {
            Path saved = dir.resolve("saved");
            copyIfExists(input, saved);
            replaceWithFifo(input);
            CliRun.Result r = assertTimeoutPreemptively(PROMPTLY, () -> merge(sharded, adapter, out));
            assertBadInput(r, out, input);
            assertTrue(r.err().contains("named pipe"), r::err);
            restore(saved, input);
        }
    }

    @Test
    void devZeroAsAdapterConfigOrIndexIsRefusedWithoutExhaustingMemory() {
        assumeTrue(Files.exists(Path.of("/dev/zero")));
        Path sharded = sharded();
        Path adapter = adapterWith("");
        for (Path input : new Path[] {adapter.resolve("adapter_config.json"), sharded.resolve(ShardIndex.FILE_NAME)}) {
            Path saved = dir.resolve("saved");
            copyIfExists(input, saved);
            replaceWithLink(input, Path.of("/dev/zero"));
            for (String[] extra : new String[][] {{}, {"--follow-symlinks"}}) {
                CliRun.Result r = assertTimeoutPreemptively(PROMPTLY, () -> merge(sharded, adapter, out, extra));
                assertBadInput(r, out, input);
                assertTrue(r.err().contains(extra.length == 0 ? "outside" : "character device"), r::err);
            }
            restore(saved, input);
        }
    }

    @Test
    void jsonInputsOverTheirSizeCapAreRefusedNamingTheCap() {
        Path sharded = sharded();
        Path adapter = adapterWith("");
        Object[][] cases = {{sharded.resolve(ShardIndex.FILE_NAME), InputFolder.MAX_INDEX_BYTES, "64 MB"},
                {sharded.resolve("config.json"), InputFolder.MAX_CONFIG_BYTES, "16 MB"},
                {adapter.resolve("adapter_config.json"), InputFolder.MAX_CONFIG_BYTES, "16 MB"}};
        for (Object[] c : cases) {
            Path input = (Path) c[0];
            Path saved = dir.resolve("saved");
            copyIfExists(input, saved);
            writeSparse(input, (Long) c[1] + 1);
            CliRun.Result r = assertTimeoutPreemptively(PROMPTLY, () -> merge(sharded, adapter, out));
            assertBadInput(r, out, input);
            assertTrue(r.err().contains((String) c[2]), r::err);
            restore(saved, input);
        }
    }

    @Test
    void shardNameLinkedOutsideTheModelFolderIsRefusedUnlessLinksAreFollowed() throws Exception {
        Path sharded = sharded();
        Path adapter = adapterWith("");
        Path outside = Files.move(sharded.resolve(TinyModels.shardName(1, 2)), dir.resolve("elsewhere.safetensors"));
        Path link = replaceWithLink(sharded.resolve(TinyModels.shardName(1, 2)), outside);
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(sharded, adapter, out);
        assertBadInput(r, out, link);
        assertTrue(r.err().contains(outside.toRealPath().toString()), r::err);
        assertEquals(before, hashTree(models));
        CliRun.Result followed = merge(sharded, adapter, out, "--follow-symlinks");
        assertEquals(ExitCodes.OK, followed.code(), followed::err);
    }

    @Test
    void tokenizerLinkedToASystemFileIsNotCopiedIntoTheOutput() throws Exception {
        Path secret = TinyModels.writeText(dir.resolve("passwd"), "root:x:0:0:root:/root:/bin/bash\n");
        Path adapter = adapterWith("");
        Path link = replaceWithLink(base.resolve("tokenizer.json"), secret);
        CliRun.Result r = merge(base, adapter, out);
        assertBadInput(r, out, link);
        // the user may say they trust it
        CliRun.Result followed = merge(base, adapter, out, "--follow-symlinks");
        assertEquals(ExitCodes.OK, followed.code(), followed::err);
        assertEquals(Files.readString(secret), Files.readString(out.resolve("tokenizer.json")));
        assertTrue(Files.isRegularFile(out.resolve("tokenizer.json"), LinkOption.NOFOLLOW_LINKS), "the output holds a copy, not a link");
    }

    @Test
    void aTokenizerOfTheAdapterFolderLinkedToASystemFileIsNotCopiedIntoTheOutput() throws Exception {
        // tokenizer files saved beside the adapter replace the base's, so they pass the same link rules
        Path secret = TinyModels.writeText(dir.resolve("passwd"), "root:x:0:0:root:/root:/bin/bash\n");
        Path adapter = adapterWith("");
        Path link = replaceWithLink(adapter.resolve("tokenizer.json"), secret);
        Map<String, String> before = hashTree(models);
        assertBadInput(merge(base, adapter, out), out, link);
        assertEquals(before, hashTree(models));
        CliRun.Result followed = merge(base, adapter, out, "--follow-symlinks", "--json");
        assertEquals(ExitCodes.OK, followed.code(), followed::err);
        assertEquals(Files.readString(secret), Files.readString(out.resolve("tokenizer.json")));
        assertTrue(followed.out().contains("tokenizer files from the adapter folder (saved with the fine-tune): tokenizer.json"), followed::out);
    }

    @Test
    void adapterFileLinkedOutsideItsFolderIsRefused() throws Exception {
        Path adapter = adapterWith("");
        Path outside = Files.move(adapter.resolve("adapter_config.json"), dir.resolve("adapter_config.json"));
        Path link = replaceWithLink(adapter.resolve("adapter_config.json"), outside);
        assertBadInput(merge(base, adapter, out), out, link);
    }

    @Test
    void baseAndAdapterInTheHuggingFaceCacheMergeVerifyAndInspect() throws Exception {
        Path hub = dir.resolve("hub");
        Path cachedBase = TinyModels.asHuggingFaceCache(sharded(), hub, "org/tiny");
        Path cachedAdapter = TinyModels.asHuggingFaceCache(adapterWith(""), hub, "org/tiny-lora");
        CliRun.Result r = merge(cachedBase, cachedAdapter, out);
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertTrue(Files.isRegularFile(out.resolve("config.json"), LinkOption.NOFOLLOW_LINKS));
        CliRun.Result v = CliRun.verify(cachedBase, cachedAdapter, out);
        assertEquals(ExitCodes.OK, v.code(), v::err);
        assertEquals(ExitCodes.OK, CliRun.run("inspect", cachedBase.toString()).code());
        assertEquals(ExitCodes.OK, CliRun.run("inspect", cachedAdapter.toString()).code());
    }

    @Test
    void verifyInspectAndQuantizeRefuseEscapingLinksUnlessLinksAreFollowed() throws Exception {
        Path adapter = adapterWith("");
        assertEquals(ExitCodes.OK, merge(base, adapter, out).code());
        Path secret = TinyModels.writeText(dir.resolve("secret.json"), "{}\n");
        Path link = replaceWithLink(out.resolve("generation_config.json"), secret);
        assertBadInput(CliRun.verify(base, adapter, out), link);
        assertEquals(ExitCodes.OK, CliRun.verify(base, adapter, out, "--follow-symlinks").code());
        assertBadInput(CliRun.run("inspect", out.toString()), link);
        assertEquals(ExitCodes.OK, CliRun.run("inspect", out.toString(), "--follow-symlinks").code());
        Path quantized = dir.resolve("nf4");
        assertBadInput(CliRun.run("quantize", "--base", out.toString(), "--out", quantized.toString(), "--quiet"), quantized, link);
        assertEquals(ExitCodes.OK, CliRun.run("quantize", "--base", out.toString(), "--out", quantized.toString(), "--quiet", "--follow-symlinks").code());
    }

    // ------------------------------------------------------------------ an index that disagrees with its shards

    @Test
    void indexThatLeavesOutATensorItsShardHoldsIsBadInputNamingTensorAndShard() {
        Path sharded = sharded();
        Map<String, String> weightMap = new LinkedHashMap<>();
        TinyModels.tinyLlama().subList(0, 3).forEach(t -> weightMap.put(t.name(), TinyModels.shardName(0, 2)));
        TinyModels.tinyLlama().subList(3, 6).forEach(t -> weightMap.put(t.name(), TinyModels.shardName(1, 2)));
        // model.norm.weight, the last tensor of shard 2, is not listed: a loader would silently leave it out
        Path index = TinyModels.writeIndex(sharded, weightMap, 0);
        Path adapter = adapterWith("");
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(sharded, adapter, out);
        assertBadInput(r, out, index);
        assertTrue(r.err().contains("model.norm.weight") && r.err().contains(TinyModels.shardName(1, 2)), r::err);
        assertEquals(before, hashTree(models));
    }

    // ------------------------------------------------------------------ integer base weights

    @ParameterizedTest
    @EnumSource(value = DType.class, names = {"I16", "U16", "I32", "U8", "F8_E4M3"})
    void adapterOnANonFloatingPointBaseWeightIsBadInputForMergeAndVerify(DType dtype) {
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        String q0 = TinyModels.q(0) + ".weight";
        long[] shape = {8, 8};
        tensors.set(0, new Tensor(q0, dtype, shape, TinyModels.pattern(64 * dtype.sizeInBytes(), 3)));
        Path intBase = TinyModels.writeModel(models.resolve("int-base"), tensors);
        Path adapter = adapterWith("");
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(intBase, adapter, out);
        assertBadInput(r, out, intBase.resolve("model.safetensors"));
        assertTrue(r.err().contains(q0) && r.err().contains(dtype.name()) && r.err().contains("BASE_DTYPE"), r::err);
        CliRun.Result v = CliRun.verify(intBase, adapter, base);
        assertBadInput(v, intBase.resolve("model.safetensors"));
        assertTrue(v.err().contains(q0), v::err);
        assertEquals(before, hashTree(models));
    }

    @Test
    void loraBiasOnAnIntegerBiasIsBadInput() {
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        String bias = TinyModels.q(0) + ".bias";
        tensors.add(new Tensor(bias, DType.I32, new long[] {8}, TinyModels.pattern(32, 5)));
        Path intBase = TinyModels.writeModel(models.resolve("int-bias"), tensors);
        List<Tensor> adapterTensors = new ArrayList<>(qProjAdapter(4));
        adapterTensors.add(TinyModels.f32Tensor(TinyModels.PEFT_PREFIX + TinyModels.q(0) + ".lora_B.bias", 8));
        Path adapter = writeAdapter(models.resolve("bias-adapter"), loraConfig(4, 8, "[\"q_proj\"]", "\"lora_bias\": true"), adapterTensors);
        CliRun.Result r = merge(intBase, adapter, out);
        assertBadInput(r, out, intBase.resolve("model.safetensors"));
        assertTrue(r.err().contains(bias) && r.err().contains("I32"), r::err);
    }

    // ------------------------------------------------------------------ an adapter that changes nothing

    @Test
    void adapterWithoutTensorsIsAFailureNamingItsFile() {
        Path empty = writeAdapter(models.resolve("empty"), loraConfig(4, 8, "[\"q_proj\"]", ""), List.of());
        Map<String, String> before = hashTree(models);
        CliRun.Result r = merge(base, empty, out);
        assertBadInput(r, out, empty.resolve("adapter_model.safetensors"));
        assertTrue(r.err().contains("--allow-empty-adapter") && r.err().contains("NO_CHANGE"), r::err);
        assertEquals(before, hashTree(models));
    }

    @Test
    void adapterWhoseOnlyKeysChangeNothingIsAFailureToo() {
        // PEFT's copy of an untrained module is not used by a merge
        List<Tensor> original = List.of(TinyModels.bf16Tensor(TinyModels.PEFT_PREFIX + "model.norm.original_module.weight", 8));
        Path adapter = writeAdapter(models.resolve("original-only"), loraConfig(4, 8, "[\"q_proj\"]", "\"modules_to_save\": [\"norm\"]"), original);
        assertBadInput(merge(base, adapter, out), out, adapter.resolve("adapter_model.safetensors"));
    }

    @Test
    void allowEmptyAdapterWritesACopyOfTheBaseAndSaysSo() throws Exception {
        Path empty = writeAdapter(models.resolve("empty"), loraConfig(4, 8, "[\"q_proj\"]", ""), List.of());
        CliRun.Result r = CliRun.run("merge", "--base", base.toString(), "--adapter", empty.toString(), "--out", out.toString(),
                "--device", "cpu", "--allow-empty-adapter");
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertTrue(r.err().contains("warning:") && r.err().contains("copy of the base"), r::err);
        try (SafetensorsFile merged = SafetensorsFile.open(out.resolve("model.safetensors"));
             SafetensorsFile original = SafetensorsFile.open(base.resolve("model.safetensors"))) {
            for (TensorInfo t : original.tensors()) {
                assertEquals(original.readAll(t), merged.readAll(merged.tensor(t.name())), t.name());
            }
        }
    }

    // ------------------------------------------------------------------ base and adapter in one folder

    @Test
    void baseAndAdapterInOneFolderGiveAModelWithoutTheAdaptersFilesAndSaySo() throws IOException {
        Path both = TinyModels.writeTinyLlama(models.resolve("both"));
        writeAdapter(both, loraConfig(4, 8, "[\"q_proj\"]", ""), qProjAdapter(4));
        TinyModels.writeText(both.resolve("README.md"), "---\nlibrary_name: peft\n---\n# the adapter's model card\n");
        TinyModels.writeText(both.resolve("tokenizer.json"), "{}\n");
        Map<String, String> before = hashTree(both);
        CliRun.Result r = CliRun.run("merge", "--base", both.toString(), "--adapter", both.toString(), "--out", out.toString(), "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertEquals(List.of("README.md", "config.json", "model.safetensors", "tokenizer.json"), TinyModels.list(out));
        String card = Files.readString(out.resolve("README.md"));
        assertTrue(card.contains("merged into its weights by loramerge") && !card.contains("the adapter's model card"), card);
        assertTrue(r.err().contains("not carried") && r.err().contains("README.md") && r.err().contains("adapter_config.json")
                && r.err().contains("adapter_model.safetensors"), r::err);
        assertEquals(before, hashTree(both));
    }

    @Test
    void adapterFilesInTheBaseFolderStayBehindAndItsReadmeGivesTheModelCardItsLicense() throws IOException {
        writeAdapter(base, loraConfig(4, 8, "[\"q_proj\"]", ""), qProjAdapter(4));
        TinyModels.writeText(base.resolve("README.md"), "---\nlicense: apache-2.0\n---\n# the base model's card\n");
        CliRun.Result r = merge(base, adapterWith(""), out);
        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertEquals(List.of("README.md", "config.json", "model.safetensors"), TinyModels.list(out));
        String card = Files.readString(out.resolve("README.md"));
        assertTrue(card.contains("license: apache-2.0") && card.contains("merged into its weights by loramerge"), card);
    }

    // ------------------------------------------------------------------ verify: unchanged tensors completely

    /** The tiny llama with a 64-row lm_head, and its q_proj merged: the unchanged tensors outnumber verify's old sample. */
    private Path mergedWithLmHead() {
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        tensors.add(TinyModels.bf16Tensor("lm_head.weight", 64, 8));
        Path withHead = TinyModels.writeModel(models.resolve("with-head"), tensors);
        assertEquals(ExitCodes.OK, merge(withHead, adapterWith(""), out).code());
        return withHead;
    }

    /** Rewrites BF16 elements {@code [first, first + count)} of {@code tensor} in the merged model. */
    private void tamper(String tensor, long first, int count, IntUnaryOperator bits) throws Exception {
        Path file = out.resolve("model.safetensors");
        long start;
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            start = f.tensor(tensor).dataStart();
        }
        try (RandomAccessFile raf = new RandomAccessFile(file.toFile(), "rw")) {
            for (long e = first; e < first + count; e++) {
                raf.seek(start + 2 * e);
                int lo = raf.read();
                int hi = raf.read();
                int v = bits.applyAsInt(lo | hi << 8);
                raf.seek(start + 2 * e);
                raf.write(v & 0xFF);
                raf.write(v >>> 8 & 0xFF);
            }
        }
    }

    @Test
    void verifyFindsANanInOneLmHeadRowThatTheAdapterNeverTouched() throws Exception {
        Path withHead = mergedWithLmHead();
        tamper("lm_head.weight", 37 * 8 + 3, 1, b -> 0x7FC0);
        CliRun.Result r = CliRun.verify(withHead, models.resolve("adapter"), out);
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r::err);
        assertTrue(r.out().contains("lm_head.weight") && r.out().contains("row 37") && r.out().contains("NaN"), r::out);
    }

    @Test
    void verifyFindsOneChangedNormElement() throws Exception {
        Path withHead = mergedWithLmHead();
        tamper("model.norm.weight", 5, 1, b -> b + 1);
        CliRun.Result r = CliRun.verify(withHead, models.resolve("adapter"), out);
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r::err);
        assertTrue(r.out().contains("model.norm.weight") && r.out().contains("element 5"), r::out);
    }

    @Test
    void verifyFindsASignFlippedLmHeadRow() throws Exception {
        Path withHead = mergedWithLmHead();
        tamper("lm_head.weight", 22 * 8, 8, b -> b ^ 0x8000);
        CliRun.Result r = CliRun.verify(withHead, models.resolve("adapter"), out, "--json");
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r::err);
        assertTrue(r.out().contains("lm_head.weight") && r.out().contains("row 22"), r::out); // the JSON report's problems
        assertTrue(r.out().contains("8 elements differ from the base"), r::out);
    }

    @Test
    void mergeVerifyComparesUnchangedTensorsCompletelyAndPassesItsOwnOutput() {
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        tensors.add(TinyModels.bf16Tensor("lm_head.weight", 64, 8));
        Path withHead = TinyModels.writeModel(models.resolve("with-head"), tensors);
        CliRun.Result r = merge(withHead, adapterWith(""), out, "--verify", "--verify-rows", "all");
        assertEquals(ExitCodes.OK, r.code(), r::err);
    }

    @Test
    void verifyChecksSampledRowsOfAnAdaptedTensorAndEveryRowWithRowsAll() throws Exception {
        // a 64-row q_proj: an error in row 33 is outside a 2-row sample (rows 0 and 63) and inside --rows all
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        tensors.set(0, TinyModels.bf16Tensor(TinyModels.q(0) + ".weight", 64, 8));
        Path tall = TinyModels.writeModel(models.resolve("tall"), tensors);
        List<Tensor> pair = new ArrayList<>(TinyModels.loraPair(TinyModels.q(0), 4, 8, 64));
        Path adapter = writeAdapter(models.resolve("tall-adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), pair);
        assertEquals(ExitCodes.OK, merge(tall, adapter, out).code());
        tamper(TinyModels.q(0) + ".weight", 33 * 8 + 2, 1, b -> b + 4);
        CliRun.Result sampled = CliRun.verify(tall, adapter, out, "--rows", "2");
        assertEquals(ExitCodes.OK, sampled.code(), sampled::err);
        CliRun.Result all = CliRun.verify(tall, adapter, out, "--rows", "all");
        assertEquals(ExitCodes.VERIFY_FAILED, all.code(), all::err);
        assertTrue(all.out().contains(TinyModels.q(0) + ".weight") && all.out().contains("ulp"), all::out);
    }

    private static void copyIfExists(Path from, Path to) {
        try {
            Files.deleteIfExists(to);
            if (Files.exists(from)) {
                Files.copy(from, to);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static void restore(Path saved, Path to) {
        try {
            Files.deleteIfExists(to);
            if (Files.exists(saved)) {
                Files.move(saved, to);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}
