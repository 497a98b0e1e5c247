package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import java.util.ArrayList;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.ToolVersion;

/**
 * The non-weight files of a merged model, as a user who trained with added tokens expects them: the
 * tokenizer saved beside the adapter, a model card that describes the merge (not the base's card),
 * and the base's license files.
 */
class MergedModelFilesTest {
    static final Path EXAMPLE = Path.of("examples/tiny-llama");

    @TempDir
    Path dir;

    private Path base;
    private Path adapter;

    @BeforeEach
    void copyTheExample() throws IOException {
        base = copy(EXAMPLE.resolve("base"), dir.resolve("base"));
        adapter = copy(EXAMPLE.resolve("adapter"), dir.resolve("adapter"));
        Files.writeString(base.resolve("README.md"), "---\nlicense: apache-2.0\nlanguage: en\n---\n# The base model\nIts own card.\n");
        Files.writeString(base.resolve("LICENSE"), "the base's license text\n");
    }

    private static Path copy(Path from, Path to) throws IOException {
        Files.createDirectories(to);
        try (Stream<Path> s = Files.list(from)) {
            for (Path p : s.toList()) {
                Files.copy(p, to.resolve(p.getFileName()));
            }
        }
        return to;
    }

    private InspectAndVerifyCliTest.Run merge(Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out",
                out.toString(), "--device", "cpu"));
        args.addAll(List.of(extra));
        return InspectAndVerifyCliTest.run(args.toArray(new String[0]));
    }

    @Test
    void theMergedModelGetsAModelCardInsteadOfTheBasesAndKeepsTheLicense() throws IOException {
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(out);
        assertEquals(ExitCodes.OK, r.code(), r.err());
        String card = Files.readString(out.resolve("README.md"), StandardCharsets.UTF_8);
        assertFalse(card.contains("Its own card"), "the base's card describes another model: " + card);
        assertTrue(card.startsWith("---\n") && card.contains("\nlicense: apache-2.0\n") && card.contains("- loramerge\n"), card);
        assertTrue(card.contains("LoRA r=8, lora_alpha=16") && card.contains("W + s·B·A") && card.contains("BF16"), card);
        assertTrue(card.contains("| loramerge | " + ToolVersion.get() + " |"), card);
        assertTrue(card.contains("| verification | not run at merge time"), card);
        assertFalse(card.contains(dir.toString()), "no local paths in a card that gets published: " + card);
        assertArrayEquals(Files.readAllBytes(base.resolve("LICENSE")), Files.readAllBytes(out.resolve("LICENSE")));
    }

    @Test
    void theCardNamesTheBaseByItsHubIdAndLeavesOutAPathTheTrainerRecorded() throws IOException {
        String config = Files.readString(adapter.resolve("adapter_config.json"), StandardCharsets.UTF_8);
        for (String[] c : new String[][] {{"meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B"}, {"gpt2", "gpt2"},
            {"/data/models/Llama-3.1-8B", null}, {"./checkpoints/base", null}, {"~/models/llama", null}, {"C:\\\\models\\\\llama", null},
            {"a/b/c", null}, {"org--name/model", null}}) {
            Files.writeString(adapter.resolve("adapter_config.json"),
                    config.replace("\"base_model_name_or_path\": \"base\"", "\"base_model_name_or_path\": \"" + c[0] + "\""));
            Path out = dir.resolve("out-" + Math.abs(c[0].hashCode()));
            InspectAndVerifyCliTest.Run r = merge(out, "--quiet");
            assertEquals(ExitCodes.OK, r.code(), r.err());
            String card = Files.readString(out.resolve("README.md"), StandardCharsets.UTF_8);
            if (c[1] != null) {
                assertTrue(card.contains("\nbase_model: " + c[1] + "\n") && card.contains("# " + c[1] + " + adapter"), card);
            } else {
                // the Hub refuses a card whose base_model is no model id, and a path is no one's business
                assertFalse(card.contains("base_model:"), c[0] + ": " + card);
                assertTrue(card.contains("# base + adapter") && card.contains("the base model in `base`"), card);
            }
        }
    }

    @Test
    void aLicenseOtherKeepsItsNameAndLink() throws IOException {
        Files.writeString(base.resolve("README.md"), "---\nlanguage: en\nlicense: other\nlicense_name: llama3.1\n"
                + "license_link: https://example.invalid/LICENSE\nextra_gated_prompt: agree\n---\n# The base model\n");
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(out, "--quiet");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        String card = Files.readString(out.resolve("README.md"), StandardCharsets.UTF_8);
        assertTrue(card.contains("\nlicense: other\nlicense_name: llama3.1\nlicense_link: https://example.invalid/LICENSE\ntags:"), card);
        assertFalse(card.contains("extra_gated_prompt"), card);
    }

    @Test
    void aVerifiedMergeRecordsTheVerificationInTheModelCard() throws IOException {
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(out, "--verify");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        String card = Files.readString(out.resolve("README.md"), StandardCharsets.UTF_8);
        assertTrue(card.contains("| verification | passed: 14 adapted tensors, 16 sampled rows each recomputed exactly, unchanged tensors compared completely, worst error 0 ulp"), card);
    }

    @Test
    void aTokenizerSavedWithTheAdapterReplacesTheBasesAndTheMergeSaysWhich() throws IOException {
        // the Trainer saved the tokenizer (with added tokens) beside the adapter, as transformers 5 writes it
        Files.writeString(adapter.resolve("tokenizer.json"), "{\"added\": \"<tool>\"}\n");
        Files.writeString(adapter.resolve("tokenizer_config.json"), "{\"from\": \"the fine-tune\"}\n");
        Files.writeString(adapter.resolve("chat_template.jinja"), "{{ fine-tune template }}\n");
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(out);
        assertEquals(ExitCodes.OK, r.code(), r.err());
        for (String f : List.of("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")) {
            assertArrayEquals(Files.readAllBytes(adapter.resolve(f)), Files.readAllBytes(out.resolve(f)), f + " is the adapter's");
        }
        assertFalse(Files.exists(out.resolve("special_tokens_map.json")), "the base's tokenizer metadata would contradict the adapter's");
        assertArrayEquals(Files.readAllBytes(base.resolve("generation_config.json")), Files.readAllBytes(out.resolve("generation_config.json")));
        assertTrue(r.err().contains("note: tokenizer files from the adapter folder (saved with the fine-tune): chat_template.jinja, "
                + "tokenizer.json, tokenizer_config.json; the base's special_tokens_map.json not carried"), r.err());
    }

    @Test
    void aChatTemplateAloneInTheAdapterFolderReplacesOnlyTheBasesTemplate() throws IOException {
        Files.writeString(adapter.resolve("chat_template.jinja"), "{{ axolotl's template }}\n");
        Path out = dir.resolve("out");
        InspectAndVerifyCliTest.Run r = merge(out, "--quiet");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertArrayEquals(Files.readAllBytes(adapter.resolve("chat_template.jinja")), Files.readAllBytes(out.resolve("chat_template.jinja")));
        for (String f : List.of("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")) {
            assertArrayEquals(Files.readAllBytes(base.resolve(f)), Files.readAllBytes(out.resolve(f)), f + " stays the base's");
        }
    }
}
