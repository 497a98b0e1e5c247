package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertSame;

/**
 * The sample {@code merge --json} writes ahead ({@link CliJson#warm}) has every part a real report
 * has, and is written with the report's own mapper, so every serializer the report needs is built.
 */
class JsonWarmupTest {
    @TempDir
    Path dir;

    @Test
    void theSampleHasEveryPartOfARealReport() throws Exception {
        Path base = TinyModels.writeTinyLlama(dir.resolve("base"));
        Path adapter = TinyModels.writeQProjAdapter(dir.resolve("adapter"));
        CliRun.Result r = CliRun.merge(base, adapter, dir.resolve("out"), "--json");
        assertEquals(0, r.code(), r.err());
        ObjectMapper m = new ObjectMapper();
        JsonNode real = m.readTree(r.out());
        JsonNode sample = m.readTree(CliJson.write(MergeCommand.sampleResult(), false));
        assertEquals(names(real), names(sample));
        assertEquals(names(real.get("tensors").get(0)), names(sample.get("tensors").get(0)));
        assertEquals(names(real.get("stages").elements().next()), names(sample.get("stages").elements().next()));
        for (String list : List.of("tensors", "warnings", "notes", "copied_files")) {
            assertFalse(sample.get(list).isEmpty(), list + " is empty in the sample: its elements' serializer is not built");
        }
        JsonNode q = sample.get("requantization");
        assertFalse(q.isNull() || q.get("tensors").isEmpty(), "the requantization part is in the sample, with a tensor");
    }

    @Test
    void theWarmUpAndTheReportShareTheirMapperWhereJacksonKeepsTheSerializers() {
        assertSame(CliJson.mapper(false), CliJson.mapper(false));
        assertSame(CliJson.mapper(true), CliJson.mapper(true));
        assertNotSame(CliJson.mapper(false), CliJson.mapper(true));
    }

    private static List<String> names(JsonNode n) {
        List<String> out = new ArrayList<>();
        n.fieldNames().forEachRemaining(out::add);
        return out;
    }
}
