package org.loramerge.testutil;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.stream.Stream;

/** What golden-case tests share: the cases under a fixture folder, and a float's bits counted in ulps. */
public final class FixtureCases {
    private FixtureCases() {
    }

    /** The names of the folders under {@code root} that hold a case.json, sorted. */
    public static Stream<String> names(Path root) throws IOException {
        try (Stream<Path> s = Files.list(root)) {
            return s.filter(p -> Files.isRegularFile(p.resolve("case.json"))).map(p -> p.getFileName().toString()).sorted().toList().stream();
        }
    }

    /**
     * Element {@code index} of {@code b}, a float of {@code size} bytes (2: BF16 or F16, 4: F32), as an
     * integer that counts ulps: consecutive values differ by one, -0 and +0 are equal.
     */
    public static long ordered(ByteBuffer b, long index, int size) {
        long bits = size == 4 ? b.getInt(b.position() + (int) index * 4) & 0xFFFFFFFFL : b.getShort(b.position() + (int) index * 2) & 0xFFFF;
        long sign = 1L << (8 * size - 1);
        return (bits & sign) != 0 ? -(bits & ~sign) : bits;
    }
}
