package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

/** {@link Json#python} against files that transformers itself wrote. */
class JsonTest {
    /** Every config.json and generation_config.json that transformers' save_pretrained wrote for the fixtures and the example. */
    static List<Path> transformersFiles() throws IOException {
        try (Stream<Path> s = Stream.concat(Files.walk(Path.of("src/test/resources/fixtures")), Files.walk(Path.of("examples")))) {
            return s.filter(p -> p.getFileName().toString().matches("(generation_)?config\\.json"))
                    .filter(p -> !p.toString().contains("adapter")).sorted().toList();
        }
    }

    @Test
    void rewritingAConfigThatTransformersWroteGivesTheSameBytes() throws IOException {
        List<Path> files = transformersFiles();
        assertTrue(files.size() >= 70, "the fixtures' configs were found: " + files.size());
        for (Path p : files) {
            String original = Files.readString(p, StandardCharsets.UTF_8);
            assertEquals(original, Json.python(new ObjectMapper().readTree(original)), p.toString());
        }
    }

    @Test
    void floatsKeysAndStringsAreWrittenAsJsonDumpsWritesThem() throws IOException {
        String in = "{\"b\": 1e-6, \"a\": [1.0, 10000000000000000.0, 0.0001, 2, {}, []], \"\u00e9\": \"caf\u00e9 \\\"\\n\", \"A\": null}";
        String expected = "{\n  \"A\": null,\n  \"a\": [\n    1.0,\n    1e+16,\n    0.0001,\n    2,\n    {},\n    []\n  ],\n"
                + "  \"b\": 1e-06,\n  \"\\u00e9\": \"caf\\u00e9 \\\"\\n\"\n}\n";
        assertEquals(expected, Json.python(new ObjectMapper().readTree(in)));
    }
}
