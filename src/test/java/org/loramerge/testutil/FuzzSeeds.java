package org.loramerge.testutil;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The fuzz targets' seed inputs, made from the committed fixtures (src/test/resources/fixtures and
 * qlora/, which PEFT and transformers wrote): {@code seed-*} files in each target's inputs folder
 * ({@code <TestClass>Inputs/<method>/}, where Jazzer reads them). FuzzInputsTest checks that the
 * committed seeds are this class's output, and rewrites them with {@code -Dfuzz.seeds.write=true}.
 * Inputs that a fuzzing run found and that were fixed sit beside them as {@code crash-*} files.
 */
public final class FuzzSeeds {
    static final Path RESOURCES = Paths.get("src/test/resources");
    private static final Path FIXTURES = RESOURCES.resolve("fixtures");
    private static final ObjectMapper JSON = new ObjectMapper();

    private FuzzSeeds() {
    }

    /** Every seed: its path under src/test/resources, and its bytes. */
    public static Map<Path, byte[]> all() {
        Map<Path, byte[]> seeds = new LinkedHashMap<>();
        Path safetensors = inputs("format", "SafetensorsFuzzTest", "anyBytesAreReadAsTensorsInsideTheFileOrRefusedNamingIt");
        seeds.put(safetensors.resolve("seed-dora_conv2d-base"), read(FIXTURES.resolve("dora_conv2d/base/model.safetensors")));
        seeds.put(safetensors.resolve("seed-conv2d-adapter"), read(FIXTURES.resolve("conv2d/adapter/adapter_model.safetensors")));

        Path checkpoint = inputs("format", "CheckpointFuzzTest", "anyShardedFolderOpensConsistentlyOrIsRefusedNamingItsFile");
        List<byte[]> sharded = new ArrayList<>(List.of(compact(FIXTURES.resolve("sharded_bf16/base/config.json")),
                compact(FIXTURES.resolve("sharded_bf16/base/model.safetensors.index.json"))));
        for (int i = 1; i <= 3; i++) {
            sharded.add(shard(FIXTURES.resolve("sharded_bf16/base"), "model-0000" + i + "-of-00003.safetensors"));
        }
        seeds.put(checkpoint.resolve("seed-sharded_bf16"), FuzzFiles.join(sharded));
        seeds.put(checkpoint.resolve("seed-conv2d-single-file"), FuzzFiles.join(List.of(compact(FIXTURES.resolve("conv2d/base/config.json")),
                new byte[0], shard(FIXTURES.resolve("conv2d/base"), "model.safetensors"))));
        seeds.put(checkpoint.resolve("seed-qlora-config"), FuzzFiles.join(List.of(compact(RESOURCES.resolve("qlora/plain_bs32/base/config.json")),
                new byte[0], shard(FIXTURES.resolve("dora_conv2d/base"), "model.safetensors"))));

        Path config = inputs("adapter", "AdapterConfigFuzzTest", "anyConfigIsReadAndAnswersForEveryModuleOrIsRefusedNamingIt");
        Set<String> patterns = new LinkedHashSet<>();
        for (String c : List.of("rank_alpha_pattern", "target_regex", "layers_to_transform", "trainable_tokens", "exclude_modules",
                "modules_to_save_resized")) {
            byte[] json = withoutNulls(FIXTURES.resolve(c).resolve("adapter/adapter_config.json"));
            seeds.put(config.resolve("seed-" + c), FuzzFiles.join(List.of(json, moduleOf(c, 0), moduleOf(c, 1))));
            patterns.addAll(patterns(FIXTURES.resolve(c).resolve("adapter/adapter_config.json")));
        }
        Path regex = inputs("adapter", "AdapterConfigFuzzTest", "anyPythonPatternCompilesAndMatchesInBoundedTimeOrIsRefused");
        int n = 0;
        for (String p : patterns) {
            seeds.put(regex.resolve("seed-" + n++), FuzzFiles.join(List.of(utf8(p), moduleOf("target_regex", 0), moduleOf("layers_to_transform", 1))));
        }

        Path planner = inputs("plan", "PlannerFuzzTest", "anyAdapterIsPlannedKeyByKeyOrRefusedNamingItsFolder");
        String[][] cases = {{"linear_bf16", "0", "0"}, {"gpt2_conv1d", "1", "0"}, {"tied_lm_head", "2", "0"}, {"conv2d", "3", "0"},
                {"qlora/plain_bs32", "4", "4"}, {"moe/mixtral_experts", "7", "0"}, {"moe/gpt_oss_experts", "8", "0"}};
        for (String[] c : cases) {
            Path dir = c[0].contains("/") ? RESOURCES.resolve(c[0]) : FIXTURES.resolve(c[0]);
            seeds.put(planner.resolve("seed-" + c[0].replace('/', '-')), planInput(Integer.parseInt(c[1]), Integer.parseInt(c[2]), dir,
                    List.of()));
        }
        // the input's own base: the Conv2d fixture's, given as its config and header
        seeds.put(planner.resolve("seed-own-base-conv2d"), planInput(6, 0, FIXTURES.resolve("conv2d"), List.of(new byte[0],
                compact(FIXTURES.resolve("conv2d/base/config.json")), FuzzFiles.headerOf(FIXTURES.resolve("conv2d/base/model.safetensors")))));
        return seeds;
    }

    private static byte[] planInput(int base, int flags, Path caseDir, List<byte[]> more) {
        List<byte[]> parts = new ArrayList<>(List.of(withoutNulls(caseDir.resolve("adapter/adapter_config.json")),
                FuzzFiles.headerOf(caseDir.resolve("adapter/adapter_model.safetensors"))));
        parts.addAll(more);
        byte[] joined = FuzzFiles.join(parts);
        byte[] out = new byte[joined.length + 2];
        out[0] = (byte) base;
        out[1] = (byte) flags;
        System.arraycopy(joined, 0, out, 2, joined.length);
        return out;
    }

    private static Path inputs(String pkg, String testClass, String method) {
        return RESOURCES.resolve("org/loramerge").resolve(pkg).resolve(testClass + "Inputs").resolve(method);
    }

    private static byte[] shard(Path dir, String name) {
        byte[] header = FuzzFiles.headerOf(dir.resolve(name));
        byte[] prefix = (name + "\n").getBytes(StandardCharsets.UTF_8);
        byte[] out = new byte[prefix.length + header.length];
        System.arraycopy(prefix, 0, out, 0, prefix.length);
        System.arraycopy(header, 0, out, prefix.length, header.length);
        return out;
    }

    /** A config without its null fields (PEFT writes every field; null ones mean the default). */
    private static byte[] withoutNulls(Path file) {
        try {
            ObjectNode root = (ObjectNode) JSON.readTree(file.toFile());
            for (Iterator<Map.Entry<String, JsonNode>> it = root.fields(); it.hasNext();) {
                if (it.next().getValue().isNull()) {
                    it.remove();
                }
            }
            return JSON.writeValueAsBytes(root);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static byte[] compact(Path file) {
        return FuzzFiles.compactJson(file);
    }

    /** The i-th module an adapter fixture adapts, from its keys. */
    private static byte[] moduleOf(String fixture, int i) {
        Path file = FIXTURES.resolve(fixture).resolve("adapter/adapter_model.safetensors");
        try {
            JsonNode header = JSON.readTree(FuzzFiles.headerOf(file));
            List<String> modules = new ArrayList<>();
            header.fieldNames().forEachRemaining(k -> {
                int cut = k.indexOf(".lora_");
                String m = (cut < 0 ? k : k.substring(0, cut)).replaceFirst("^base_model\\.model\\.", "");
                if (!k.equals("__metadata__") && !modules.contains(m)) {
                    modules.add(m);
                }
            });
            return utf8(modules.get(Math.min(i, modules.size() - 1)));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The regular expressions of a config: a target_modules or exclude_modules string, rank and alpha pattern keys, layers_pattern. */
    private static List<String> patterns(Path configFile) {
        List<String> out = new ArrayList<>();
        try {
            JsonNode c = JSON.readTree(configFile.toFile());
            for (String f : List.of("target_modules", "exclude_modules", "layers_pattern")) {
                if (c.path(f).isTextual()) {
                    out.add(c.get(f).textValue());
                }
            }
            for (String f : List.of("rank_pattern", "alpha_pattern")) {
                c.path(f).fieldNames().forEachRemaining(out::add);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    private static byte[] read(Path file) {
        try {
            return Files.readAllBytes(file);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
