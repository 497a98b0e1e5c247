package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import java.nio.file.StandardCopyOption;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The config.json that merge and quantize write, byte for byte against what transformers'
 * save_pretrained writes for the same change (src/test/resources/configs, made by
 * scripts/fixtures/make_config_fixtures.py): a diff against the base shows only the keys that changed.
 */
class ConfigJsonGoldenTest {
    static final Path CONFIGS = Path.of("src/test/resources/configs");
    static final Path FIXTURES = Path.of("src/test/resources/fixtures");
    static final Path QLORA = Path.of("src/test/resources/qlora");

    @TempDir
    Path dir;

    /** A copy of {@code model} whose config.json is the golden case's base config. */
    private Path withBaseConfig(Path model, String golden) throws IOException {
        Path copy = dir.resolve("base-" + golden);
        Files.createDirectories(copy);
        try (Stream<Path> s = Files.list(model)) {
            for (Path p : s.toList()) {
                Files.copy(p, copy.resolve(p.getFileName()));
            }
        }
        Files.copy(CONFIGS.resolve(golden).resolve("base/config.json"), copy.resolve("config.json"),
                StandardCopyOption.REPLACE_EXISTING);
        return copy;
    }

    private static String expected(String golden) throws IOException {
        return Files.readString(CONFIGS.resolve(golden).resolve("expected/config.json"), StandardCharsets.UTF_8);
    }

    private String run(String... args) throws IOException {
        List<String> all = new ArrayList<>(List.of(args));
        all.add("--quiet");
        PrintStream err = System.err;
        ByteArrayOutputStream captured = new ByteArrayOutputStream();
        int code;
        try {
            System.setErr(new PrintStream(captured, true, StandardCharsets.UTF_8));
            code = Main.run(all.toArray(new String[0]));
        } finally {
            System.setErr(err);
        }
        assertEquals(ExitCodes.OK, code, captured.toString(StandardCharsets.UTF_8));
        Path out = Path.of(args[Arrays.asList(args).indexOf("--out") + 1]);
        return Files.readString(out.resolve("config.json"), StandardCharsets.UTF_8);
    }

    @Test
    void dtypeConversionChangesOnlyTheDtypeLine() throws IOException {
        Path base = withBaseConfig(FIXTURES.resolve("linear_bf16/base"), "dtype_f32");
        assertEquals(expected("dtype_f32"), run("merge", "--base", base.toString(), "--adapter", FIXTURES.resolve("linear_bf16/adapter").toString(),
                "--out", dir.resolve("out").toString(), "--device", "cpu", "--dtype", "f32"));
    }

    @Test
    void untyingTheLmHeadChangesOnlyTieWordEmbeddings() throws IOException {
        Path base = withBaseConfig(FIXTURES.resolve("tied_lm_head/base"), "untied");
        assertEquals(expected("untied"), run("merge", "--base", base.toString(), "--adapter", FIXTURES.resolve("tied_lm_head/adapter").toString(),
                "--out", dir.resolve("out").toString(), "--device", "cpu"));
    }

    @Test
    void aResizedVocabularyChangesOnlyVocabSize() throws IOException {
        Path base = withBaseConfig(FIXTURES.resolve("modules_to_save_resized/base"), "vocab_resized");
        assertEquals(expected("vocab_resized"), run("merge", "--base", base.toString(), "--adapter",
                FIXTURES.resolve("modules_to_save_resized/adapter").toString(), "--out", dir.resolve("out").toString(), "--device", "cpu"));
    }

    @Test
    void quantizeAddsQuantizationConfigAsTransformersWritesIt() throws IOException {
        Path base = withBaseConfig(FIXTURES.resolve("linear_bf16/base"), "quantized");
        assertEquals(expected("quantized"), run("quantize", "--base", base.toString(), "--out", dir.resolve("out").toString(), "--double-quant"));
    }

    @Test
    void dequantizingMergeRemovesOnlyQuantizationConfig() throws IOException {
        Path base = withBaseConfig(QLORA.resolve("dq_bs64/base"), "dequantized");
        assertEquals(expected("dequantized"), run("merge", "--base", base.toString(), "--adapter", QLORA.resolve("dq_bs64/adapter").toString(),
                "--out", dir.resolve("out").toString(), "--device", "cpu", "--to", "bf16"));
    }
}
