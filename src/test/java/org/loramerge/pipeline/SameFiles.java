package org.loramerge.pipeline;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;

/** Output folders compared file by file, byte for byte. */
final class SameFiles {
    private SameFiles() {
    }

    /** {@code actual} holds the files of {@code expected}, with the same bytes, and no others; returns them, sorted. */
    static List<Path> assertSameFiles(Path expected, Path actual) throws Exception {
        List<Path> files;
        try (Stream<Path> s = Files.list(expected)) {
            files = s.sorted().toList();
        }
        for (Path p : files) {
            assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(actual.resolve(p.getFileName())), p.getFileName().toString());
        }
        try (Stream<Path> s = Files.list(actual)) {
            assertEquals(files.size(), s.count(), "the same files");
        }
        return files;
    }
}
