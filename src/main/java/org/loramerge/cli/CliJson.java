package org.loramerge.cli;

import com.fasterxml.jackson.annotation.JsonAutoDetect;
import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.annotation.PropertyAccessor;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.util.DefaultIndenter;
import com.fasterxml.jackson.core.util.DefaultPrettyPrinter;
import com.fasterxml.jackson.core.util.Separators;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.PrintStream;
import java.nio.file.Path;
import org.loramerge.errors.ExitCode;

/**
 * The JSON every command prints on stdout under {@code --json}: one style for all of them,
 * snake_case keys (as PEFT's and transformers' own files spell theirs), two-space indent and
 * {@code "key": value}. A failure under {@code --json} prints {@link #error} instead, so a script
 * always gets one JSON document.
 */
final class CliJson {
    private CliJson() {
    }

    /** The two mappers, made once: Jackson keeps the serializers it builds for a type in its mapper. */
    private static final ObjectMapper ALL = newMapper(false);
    private static final ObjectMapper NON_NULL = newMapper(true);

    /** The mapper for reports; {@code omitNulls} leaves out fields that do not apply (inspect). Configured once; thread-safe. */
    static ObjectMapper mapper(boolean omitNulls) {
        return omitNulls ? NON_NULL : ALL;
    }

    private static ObjectMapper newMapper(boolean omitNulls) {
        ObjectMapper m = new ObjectMapper().setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE);
        m.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.PUBLIC_ONLY);
        if (omitNulls) {
            m.setSerializationInclusion(JsonInclude.Include.NON_NULL);
        }
        return m;
    }

    static String write(Object value, boolean omitNulls) {
        DefaultPrettyPrinter pp = new DefaultPrettyPrinter()
                .withSeparators(Separators.createDefaultInstance().withObjectFieldValueSpacing(Separators.Spacing.AFTER))
                .withObjectIndenter(new DefaultIndenter("  ", "\n"))
                .withArrayIndenter(new DefaultIndenter("  ", "\n"));
        try {
            return mapper(omitNulls).writer(pp).writeValueAsString(value);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("a report could not be written as JSON: " + e, e);
        }
    }

    /**
     * Writes {@code sample} on a daemon thread and throws the text away, so that a command which
     * reports after a long run finds Jackson's classes loaded and its serializers for the report's
     * types built in the mapper it writes with: that took 30-50 ms of the first report of a process
     * on the H200 machine (benchmarks/RESULTS.md, 2026-12-01, start-up), which are then spent while
     * the command runs.
     */
    static void warm(Object sample, boolean omitNulls) {
        Thread t = new Thread(() -> write(sample, omitNulls), "loramerge-json-warmup");
        t.setDaemon(true);
        t.start();
    }

    static void print(PrintStream out, Object value, boolean omitNulls) {
        out.println(write(value, omitNulls));
        out.flush();
    }

    /** {@code {"error": {"code": 3, "kind": "BAD_INPUT", "message": ..., "file": ...}}}; file is null when unknown. */
    static void error(PrintStream out, ExitCode code, String message, Path file) {
        ObjectMapper m = mapper(false);
        ObjectNode root = m.createObjectNode();
        ObjectNode e = root.putObject("error");
        e.put("code", code.code());
        e.put("kind", code.name());
        e.put("message", message);
        if (file == null) {
            e.putNull("file");
        } else {
            e.put("file", file.toString());
        }
        print(out, root, false);
    }
}
