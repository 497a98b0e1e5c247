package org.loramerge.adapter;

import com.code_intelligence.jazzer.junit.FuzzTest;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.loramerge.testutil.FuzzFiles;
import org.loramerge.testutil.FuzzOracle;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Coverage-guided fuzzing of {@code adapter_config.json} and of the translation of its Python
 * patterns to RE2/J: any config is either read, and then answers every question the planner asks
 * about any module name, or refused with an {@link AdapterException} naming the file; any pattern
 * either compiles, and then matches any name in bounded time, or is refused with a reason.
 */
class AdapterConfigFuzzTest {
    private static final Path DIR = FuzzFiles.scratch("adapter-config");
    /** Module names asked about when the input gives none: the forms of the fixtures' models. */
    private static final List<String> MODULES = List.of("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj",
            "model.embed_tokens", "lm_head", "transformer.h.0.attn.c_attn", "conv1", "fc");

    /** Input: the config, then module names to ask about, joined by NUL. */
    @Tag("fuzz")
    @Timeout(10)
    @FuzzTest(maxDuration = "45s")
    void anyConfigIsReadAndAnswersForEveryModuleOrIsRefusedNamingIt(byte[] data) throws IOException {
        List<byte[]> parts = FuzzFiles.parts(data, 0, 17);
        Path file = DIR.resolve(LoraAdapter.CONFIG);
        Files.write(file, parts.get(0));
        List<String> modules = new ArrayList<>();
        for (byte[] p : parts.subList(1, parts.size())) {
            modules.add(new String(p, StandardCharsets.UTF_8));
        }
        if (modules.isEmpty()) {
            modules = MODULES;
        }
        List<String> names = modules;
        FuzzOracle.acceptsOrRefuses(() -> {
            AdapterConfig c = AdapterConfig.read(file);
            assertTrue(c.r() > 0, "r " + c.r() + " accepted");
            for (String m : names) {
                c.targets(m);
                int rank = c.rankFor(m);
                assertTrue(rank > 0, "rank " + rank + " for " + m);
                c.alphaFor(m);
                c.scaleFor(m);
                c.savesModule(m);
                c.tokenIndicesFor(m, true);
                assertEquals(rank, c.rankFor(m), "a second question about " + m + " has another answer");
            }
        }, DIR);
    }

    /** Input: a Python pattern, then names to match, joined by NUL. */
    @Tag("fuzz")
    @Timeout(10)
    @FuzzTest(maxDuration = "45s")
    void anyPythonPatternCompilesAndMatchesInBoundedTimeOrIsRefused(byte[] data) {
        List<byte[]> parts = FuzzFiles.parts(data, 0, 9);
        String pattern = new String(parts.get(0), StandardCharsets.UTF_8);
        PeftRegex full;
        PeftRegex key;
        try {
            full = PeftRegex.compile(pattern);
        } catch (PeftRegex.Refused e) {
            assertTrue(e.getMessage() != null && !e.getMessage().isBlank(), "refused without a reason");
            return;
        }
        assertTrue(full.size() <= PeftRegex.MAX_SIZE, "a program of " + full.size() + " instructions was accepted");
        try {
            // the way rank_pattern and alpha_pattern keys are wrapped (AdapterConfig.KEY_PREFIX / KEY_SUFFIX)
            key = PeftRegex.compile("(.*\\.)?(", pattern, ")$");
        } catch (PeftRegex.Refused e) {
            key = null;
        }
        List<String> names = new ArrayList<>(MODULES);
        for (byte[] p : parts.subList(1, parts.size())) {
            names.add(new String(p, StandardCharsets.UTF_8));
        }
        for (String name : names) {
            full.fullMatch(name);
            full.matchesAtStart(name);
            if (key != null) {
                key.matchesAtStart(name);
            }
        }
    }
}
