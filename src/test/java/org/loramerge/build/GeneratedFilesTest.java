package org.loramerge.build;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/** Generated files are committed; these tests prove they are what their generators make today. */
class GeneratedFilesTest {
    static final Path FIXTURES = Paths.get("src/test/resources/fixtures");

    /** The PTX and the cuBLAS forwarder are rebuilt from kernels/ and native/ and compared byte for byte (needs nvcc, cmake, gcc; CI has them). */
    @Test
    void ptxAndForwarderAreCurrent() throws Exception {
        assumeTrue(onPath("nvcc") && onPath("cmake") && onPath("gcc"), "nvcc, cmake or gcc missing: cannot rebuild the kernels here");
        Process p = new ProcessBuilder("bash", "scripts/native/check-generated.sh").redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(10, TimeUnit.MINUTES), "check-generated.sh did not finish");
        assertEquals(0, p.exitValue(), "committed native outputs are stale; run scripts/native/build-native.sh and commit:\n" + out);
    }

    /** The golden fixtures are scripts/fixtures/make_fixtures.py's output: its hash and every file's are in MANIFEST.sha256, which it writes. */
    @Test
    void fixturesMatchTheirGenerator() throws Exception {
        List<String> manifest = Files.readAllLines(FIXTURES.resolve("MANIFEST.sha256"));
        assertEquals(sha256(Paths.get("scripts/fixtures/make_fixtures.py")) + "  generator:scripts/fixtures/make_fixtures.py", manifest.get(0),
                "scripts/fixtures/make_fixtures.py changed since the fixtures were made: regenerate them "
                        + "(python scripts/fixtures/make_fixtures.py, with the versions in scripts/fixtures/requirements-fixtures.txt)");
        List<String> actual = hashedFiles(FIXTURES);
        assertEquals(String.join("\n", manifest.subList(1, manifest.size())), String.join("\n", actual),
                "fixture files differ from what the generator wrote; regenerate instead of editing by hand");
    }

    /**
     * The golden QLoRA cases are scripts/fixtures/make_qlora_fixtures.py's output, with the expected merges of
     * scripts/fixtures/nf4_reference.py: both scripts' hashes and every file's are in MANIFEST.sha256.
     */
    @Test
    void qloraFixturesMatchTheirGenerator() throws Exception {
        Path dir = Paths.get("src/test/resources/qlora");
        List<String> manifest = Files.readAllLines(dir.resolve("MANIFEST.sha256"));
        String regenerate = "regenerate them with scripts/fixtures/make_qlora_fixtures.py (a Python with torch, transformers, peft, safetensors:"
                + " versions in scripts/fixtures/requirements-fixtures.txt)";
        assertEquals(sha256(Paths.get("scripts/fixtures/make_qlora_fixtures.py")) + "  generator:scripts/fixtures/make_qlora_fixtures.py", manifest.get(0),
                "scripts/fixtures/make_qlora_fixtures.py changed since the QLoRA fixtures were made: " + regenerate);
        assertEquals(sha256(Paths.get("scripts/fixtures/nf4_reference.py")) + "  reference:scripts/fixtures/nf4_reference.py", manifest.get(1),
                "scripts/fixtures/nf4_reference.py changed since the QLoRA fixtures were made: " + regenerate);
        List<String> actual = hashedFiles(dir);
        assertEquals(String.join("\n", manifest.subList(2, manifest.size())), String.join("\n", actual),
                "QLoRA fixture files differ from what the generator wrote; " + regenerate);
        long bytes = 0;
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) s.filter(Files::isRegularFile)::iterator) {
                bytes += Files.size(p);
            }
        }
        assertTrue(bytes < 500_000, "QLoRA fixtures stay small: " + bytes + " bytes");
    }

    /**
     * The golden cases of GPTQ and AWQ bases merged --to fp8 are scripts/fixtures/make_gptq_fp8_fixtures.py's
     * output, with the GPTQ/AWQ tensors of make_gptq_awq_fixtures.py's reference and make_fp8_fixtures.py's
     * stand-in for transformers' quantizer, which it imports: the three scripts' hashes and every file's are in
     * MANIFEST.sha256.
     */
    @Test
    void gptqToFp8FixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("gptq_fp8", "make_gptq_fp8_fixtures.py", null, 0, "make_gptq_awq_fixtures.py", "make_fp8_fixtures.py");
    }

    /**
     * The golden FP8, GPTQ and AWQ cases are their generators' output (scripts/fixtures/make_fp8_fixtures.py,
     * make_gptq_awq_fixtures.py): each MANIFEST.sha256 holds its generator's hash and every file's.
     */
    @ParameterizedTest
    @CsvSource({"fp8, make_fp8_fixtures.py", "gptq_awq, make_gptq_awq_fixtures.py"})
    void quantizedBaseFixturesMatchTheirGenerator(String folder, String script) throws Exception {
        assertMatchesGenerator(folder, script, null, 0);
    }

    /**
     * The golden MoE cases and forms.json are scripts/fixtures/make_moe_fixtures.py's output (PEFT 0.21 and
     * transformers 5.18 on tiny MoE models): its hash and every file's are in MANIFEST.sha256.
     */
    @Test
    void moeFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("moe", "make_moe_fixtures.py", null, 400_000);
    }

    /**
     * The golden cases of MoE experts on quantized bases are scripts/fixtures/make_moe_quant_fixtures.py's output, its GPTQ
     * and AWQ weights packed by make_gptq_awq_fixtures.py's reference and its compressed-tensors ones by make_fp8_fixtures.py's: the
     * three scripts' hashes and every file's are in MANIFEST.sha256. Five cases of about 40 kB each.
     */
    @Test
    void moeQuantFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("moe_quant", "make_moe_quant_fixtures.py", null, 250_000, "make_gptq_awq_fixtures.py", "make_fp8_fixtures.py");
    }

    /**
     * The golden cases of PEFT's targeting and tied-embedding rules at their edges are
     * scripts/fixtures/make_peft_edge_fixtures.py's output (PEFT 0.21 itself): its hash, peft_golden.py's and every file's are in MANIFEST.sha256.
     */
    @Test
    void peftEdgeFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("peft_edges", "make_peft_edge_fixtures.py", null, 1_000_000, "peft_golden.py");
    }

    /**
     * The golden cases of vision-language models (adapters under transformers' loaded names) are
     * scripts/fixtures/make_vlm_fixtures.py's output (transformers and PEFT 0.21 themselves): its hash, peft_golden.py's and every file's are in MANIFEST.sha256.
     */
    @Test
    void vlmFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("vlm", "make_vlm_fixtures.py", null, 1_000_000, "peft_golden.py");
    }

    /** The config.json golden files are scripts/fixtures/make_config_fixtures.py's output (transformers' own save_pretrained). */
    @Test
    void configFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("configs", "make_config_fixtures.py", null, 0);
    }

    /**
     * The golden extract cases are scripts/fixtures/make_extract_fixtures.py's output, with the adapters the jar's
     * extract wrote and PEFT loaded: the script's hash and every file's are in MANIFEST.sha256.
     */
    @Test
    void extractFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("extract", "make_extract_fixtures.py", "mvn -q package -DskipTests; python scripts/fixtures/make_extract_fixtures.py", 300_000);
    }

    /**
     * The golden combination cases are scripts/fixtures/make_combine_fixtures.py's output (PEFT's
     * add_weighted_adapter, and the task-arithmetic family from scripts/fixtures/combine_reference.py):
     * both scripts' hashes and every file's are in MANIFEST.sha256.
     */
    @Test
    void combineFixturesMatchTheirGenerator() throws Exception {
        assertMatchesGenerator("combine", "make_combine_fixtures.py", null, 1_000_000, "combine_reference.py");
    }

    /**
     * The bitsandbytes fixtures are what scripts/fixtures/make_bnb_fixtures.sh wrote on the GPU machine (bitsandbytes
     * built from source; it cannot run here): MANIFEST.sha256, which the script writes, names the script and the
     * reference it ran with and lists every file's hash, and the folder holds exactly those files, unchanged.
     */
    @Test
    void bitsandbytesFixturesAreWhatTheGpuRunWrote() throws Exception {
        Path dir = Paths.get("src/test/resources/bnb");
        List<String> manifest = Files.readAllLines(dir.resolve("MANIFEST.sha256"));
        String regenerate = "regenerate them on the GPU machine (scripts/fixtures/make_bnb_fixtures.sh; its header says how) and replace the "
                + "folder with the bnb/ of its bnb-fixtures.tgz, instead of editing files by hand";
        assertTrue(manifest.get(0).endsWith("  generator:scripts/fixtures/make_bnb_fixtures.py"), manifest.get(0));
        assertTrue(manifest.get(1).endsWith("  reference:scripts/fixtures/nf4_reference.py"), manifest.get(1));
        List<String> listed = new java.util.ArrayList<>(manifest.subList(2, manifest.size()));
        listed.sort(java.util.Comparator.comparing(line -> line.substring(line.indexOf("  ") + 2)));
        List<String> actual = new java.util.ArrayList<>(hashedFiles(dir));
        actual.sort(java.util.Comparator.comparing(line -> line.substring(line.indexOf("  ") + 2)));
        assertEquals(String.join("\n", listed), String.join("\n", actual), "bitsandbytes fixture files differ from MANIFEST.sha256; " + regenerate);
        long bytes = 0;
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) s.filter(Files::isRegularFile)::iterator) {
                bytes += Files.size(p);
            }
        }
        assertTrue(bytes < 3_200_000, "bitsandbytes fixtures stay small: " + bytes + " bytes");
    }

    /** "SHA256  relative/path" of every file under {@code dir} but its manifest, in path order: the manifest's lines. */
    /**
     * {@code folder}'s MANIFEST.sha256 (under src/test/resources) is scripts/fixtures/{@code generator}'s output: its
     * first line the generator's hash, then each of {@code references}' (scripts it imports), then every file's; the
     * files together stay under {@code maxBytes} when that is not 0. {@code command}: how to regenerate them, when
     * more than running the generator.
     */
    private static void assertMatchesGenerator(String folder, String generator, String command, long maxBytes, String... references)
            throws IOException {
        Path dir = Paths.get("src/test/resources").resolve(folder);
        List<String> manifest = Files.readAllLines(dir.resolve("MANIFEST.sha256"));
        String regenerate = "regenerate them (" + (command != null ? command : "python scripts/fixtures/" + generator)
                + ", with the versions in scripts/fixtures/requirements-fixtures.txt)";
        assertEquals(sha256(Paths.get("scripts/fixtures", generator)) + "  generator:scripts/fixtures/" + generator, manifest.get(0),
                "scripts/fixtures/" + generator + " changed since the " + folder + " fixtures were made: " + regenerate);
        for (int i = 0; i < references.length; i++) {
            assertEquals(sha256(Paths.get("scripts/fixtures", references[i])) + "  reference:scripts/fixtures/" + references[i],
                    manifest.get(1 + i), "scripts/fixtures/" + references[i] + " changed since the " + folder + " fixtures were made: " + regenerate);
        }
        assertEquals(String.join("\n", manifest.subList(1 + references.length, manifest.size())), String.join("\n", hashedFiles(dir)),
                folder + " fixture files differ from what the generator wrote; " + regenerate);
        if (maxBytes > 0) {
            long bytes = 0;
            try (Stream<Path> files = Files.walk(dir)) {
                for (Path f : (Iterable<Path>) files.filter(Files::isRegularFile)::iterator) {
                    bytes += Files.size(f);
                }
            }
            assertTrue(bytes < maxBytes, folder + " fixtures stay small: " + bytes + " bytes");
        }
    }

    private static List<String> hashedFiles(Path dir) throws IOException {
        List<String> out = new java.util.ArrayList<>();
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) s.filter(Files::isRegularFile).filter(x -> !x.getFileName().toString().equals("MANIFEST.sha256"))
                    .sorted()::iterator) {
                out.add(sha256(p) + "  " + dir.relativize(p).toString().replace('\\', '/'));
            }
        }
        return out;
    }

    private static String sha256(Path p) throws IOException {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(p)));
        } catch (java.security.NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    private static boolean onPath(String exe) {
        for (String dir : System.getenv().getOrDefault("PATH", "").split(":")) {
            if (Files.isExecutable(Paths.get(dir, exe))) {
                return true;
            }
        }
        return false;
    }
}
