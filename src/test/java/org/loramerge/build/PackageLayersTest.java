package org.loramerge.build;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Data flows one way: cli -> batch -> api -> pipeline -> verify -> engine (select -> cuda -> cpu -> engine) ->
 * plan -> (adapter, quant, linalg) -> format -> errors. Each package may use only the packages listed
 * for it here, whether by import or by a fully-qualified name in the code; in particular the
 * pipeline knows no concrete engine, plan knows no engine at all, and api (the library facade)
 * knows nothing of the command line.
 */
class PackageLayersTest {
    private static final Path MAIN = Paths.get("src/main/java/org/loramerge");
    private static final Map<String, Set<String>> ALLOWED = Map.ofEntries(
            Map.entry("errors", Set.of()),
            Map.entry("format", Set.of("errors")),
            Map.entry("linalg", Set.of("errors", "format")),
            Map.entry("adapter", Set.of("errors", "format")),
            Map.entry("quant", Set.of("errors", "format")),
            Map.entry("plan", Set.of("errors", "format", "adapter", "quant", "linalg")),
            Map.entry("engine", Set.of("errors", "format", "quant", "plan", "linalg")),
            Map.entry("engine.cpu", Set.of("errors", "format", "quant", "plan", "engine", "linalg")),
            Map.entry("engine.cuda", Set.of("errors", "format", "quant", "plan", "engine", "engine.cpu", "linalg")),
            Map.entry("engine.select", Set.of("errors", "engine", "engine.cpu")),
            Map.entry("verify", Set.of("errors", "format", "quant", "plan", "engine", "engine.cpu")),
            Map.entry("pipeline", Set.of("errors", "format", "adapter", "quant", "plan", "engine", "verify", "linalg")),
            Map.entry("api", Set.of("errors", "format", "adapter", "quant", "linalg", "plan", "engine", "engine.select", "verify", "pipeline")),
            Map.entry("batch", Set.of("errors", "format", "adapter", "quant", "linalg", "plan", "engine", "engine.select", "verify", "pipeline", "api")),
            Map.entry("cli", Set.of("errors", "format", "adapter", "quant", "linalg", "plan", "engine", "engine.select", "verify", "pipeline", "api",
                    "batch")));
    private static final Pattern PACKAGE = Pattern.compile("^package org\\.loramerge\\.([\\w.]+);", Pattern.MULTILINE);
    /** An import, or a qualified name in code: org.loramerge.PKG.Type (comments are stripped first). */
    private static final Pattern USE = Pattern.compile("org\\.loramerge\\.((?:[a-z]\\w*\\.)*[a-z]\\w*)\\.[A-Z]");

    @Test
    void everyPackageUsesOnlyTheLayersBelowIt() throws IOException {
        List<String> violations = new ArrayList<>();
        Set<String> seen = new TreeSet<>();
        try (Stream<Path> files = Files.walk(MAIN)) {
            for (Path p : files.filter(f -> f.toString().endsWith(".java")).toList()) {
                String src = Files.readString(p);
                Matcher pm = PACKAGE.matcher(src);
                assertTrue(pm.find(), p + " has no package");
                String pkg = pm.group(1);
                seen.add(pkg);
                Set<String> allowed = ALLOWED.get(pkg);
                assertTrue(allowed != null, "package " + pkg + " is not placed in the layering; add it to ALLOWED");
                Matcher m = USE.matcher(withoutComments(src));
                while (m.find()) {
                    String used = m.group(1);
                    if (!used.equals(pkg) && !allowed.contains(used)) {
                        violations.add(MAIN.relativize(p) + ": " + pkg + " uses " + used);
                    }
                }
            }
        }
        assertEquals(List.of(), violations, "upward or sideways dependencies");
        assertEquals(new TreeSet<>(ALLOWED.keySet()), seen, "the layering lists a package that no longer exists, or misses one");
    }

    /**
     * The source without comments (javadoc links name other packages freely) and with every string and
     * character literal emptied, in one pass: a "//" inside a string is not a comment, and a quote inside
     * a comment opens no string.
     */
    static String withoutComments(String src) {
        StringBuilder out = new StringBuilder(src.length());
        int i = 0;
        int n = src.length();
        while (i < n) {
            char c = src.charAt(i);
            if (c == '/' && i + 1 < n && src.charAt(i + 1) == '/') {
                while (i < n && src.charAt(i) != '\n') {
                    i++;
                }
            } else if (c == '/' && i + 1 < n && src.charAt(i + 1) == '*') {
                int end = src.indexOf("*/", i + 2);
                i = end < 0 ? n : end + 2;
            } else if (c == '"' || c == '\'') {
                i++;
                while (i < n && src.charAt(i) != c) {
                    i += src.charAt(i) == '\\' ? 2 : 1;
                }
                i++;
                out.append(c).append(c);
            } else {
                out.append(c);
                i++;
            }
        }
        return out.toString();
    }
}
