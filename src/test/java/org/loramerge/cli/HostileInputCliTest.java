package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.cli.CliRun.assertBadInput;
import static org.loramerge.cli.CliRun.merge;
import static org.loramerge.testutil.TinyModels.hashTree;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.writeAdapter;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
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
}
