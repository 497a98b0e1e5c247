package org.loramerge.build;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.loramerge.testutil.FuzzSeeds;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The fuzz targets' committed inputs (src/test/resources/org/loramerge/*&#47;*FuzzTestInputs/): the seeds
 * are what {@link FuzzSeeds} makes from today's fixtures, and each target's inputs stay small.
 * {@code mvn test -Dtest=FuzzInputsTest -Dfuzz.seeds.write=true} rewrites the seeds.
 */
class FuzzInputsTest {
    private static final Path INPUTS = Paths.get("src/test/resources/org/loramerge");
    /** Seeds plus fixed findings: a few kB a target keep mvn test's replay of them quick. */
    private static final long MAX_BYTES_PER_TARGET = 24_000;

    @Test
    void committedSeedsAreMadeFromTheCurrentFixtures() throws IOException {
        Map<Path, byte[]> seeds = FuzzSeeds.all();
        if (Boolean.getBoolean("fuzz.seeds.write")) {
            for (Map.Entry<Path, byte[]> e : seeds.entrySet()) {
                Files.createDirectories(e.getKey().getParent());
                Files.write(e.getKey(), e.getValue());
            }
        }
        for (Map.Entry<Path, byte[]> e : seeds.entrySet()) {
            assertTrue(Files.isRegularFile(e.getKey()), e.getKey() + " is missing; rewrite the seeds (-Dfuzz.seeds.write=true) and commit them");
            assertArrayEquals(e.getValue(), Files.readAllBytes(e.getKey()),
                    e.getKey() + " is not what FuzzSeeds makes of the fixtures; rewrite the seeds (-Dfuzz.seeds.write=true) and commit them");
        }
        TreeSet<Path> committed = new TreeSet<>();
        for (Path p : inputFiles()) {
            if (p.getFileName().toString().startsWith("seed-")) {
                committed.add(p);
            }
        }
        assertEquals(new TreeSet<>(seeds.keySet()), committed, "seed files that FuzzSeeds no longer makes: remove them");
    }

    @Test
    void eachTargetsCommittedInputsStaySmall() throws IOException {
        List<String> large = new ArrayList<>();
        try (Stream<Path> dirs = Files.walk(INPUTS)) {
            for (Path dir : dirs.filter(d -> Files.isDirectory(d) && d.getParent().getFileName().toString().endsWith("FuzzTestInputs")).toList()) {
                long bytes = 0;
                try (Stream<Path> files = Files.walk(dir)) {
                    for (Path f : files.filter(Files::isRegularFile).toList()) {
                        bytes += Files.size(f);
                    }
                }
                if (bytes > MAX_BYTES_PER_TARGET) {
                    large.add(dir + ": " + bytes + " bytes");
                }
            }
        }
        assertEquals(List.of(), large, "fuzz inputs over " + MAX_BYTES_PER_TARGET + " bytes a target: minimize them (libFuzzer -merge) before committing");
    }

    private static List<Path> inputFiles() throws IOException {
        try (Stream<Path> s = Files.walk(INPUTS)) {
            return s.filter(Files::isRegularFile).filter(p -> p.toString().contains("FuzzTestInputs")).toList();
        }
    }
}
