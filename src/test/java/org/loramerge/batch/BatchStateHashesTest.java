package org.loramerge.batch;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

/** The outputs' file hashes the batch records, taken on several threads at once. */
class BatchStateHashesTest {
    @TempDir
    Path dir;

    @Test
    void eachOutputGetsTheSha256OfEveryFileByItsRelativePathWhateverTheThreadsFinishFirst() throws Exception {
        Random random = new Random(5);
        Path a = output("a", random, 3);
        Path b = output("b", random, 5);
        List<BatchState.Hashed> hashed = BatchState.hashes(List.of(a, b, a));
        assertEquals(3, hashed.size());
        assertEquals(expected(a), hashed.get(0).files());
        assertEquals(expected(b), hashed.get(1).files());
        assertEquals(expected(a), hashed.get(2).files());
        assertEquals(expected(b), BatchState.hashes(b));
    }

    @Test
    void anOutputThatCannotBeListedGetsItsErrorAndTheOthersTheirHashes() throws Exception {
        Path a = output("a", new Random(6), 2);
        Path gone = dir.resolve("gone");
        List<BatchState.Hashed> hashed = BatchState.hashes(List.of(gone, a));
        assertNotNull(hashed.get(0).error());
        assertNull(hashed.get(0).files());
        assertNull(hashed.get(1).error());
        assertEquals(expected(a), hashed.get(1).files());
        assertThrows(IOException.class, () -> BatchState.hashes(gone));
    }

    @Test
    void aLinkInAnOutputIsRecordedAsNotARegularFile() throws Exception {
        Path a = output("a", new Random(7), 1);
        Files.createSymbolicLink(a.resolve("link"), a.resolve("f0.bin"));
        Map<String, String> files = BatchState.hashes(a);
        assertEquals("not a regular file", files.get("link"));
        assertEquals(expected(a).get("f0.bin"), files.get("f0.bin"));
    }

    /** A folder of {@code n} files of random bytes (one in a sub-folder), some larger than the hashing buffer. */
    private Path output(String name, Random random, int n) throws IOException {
        Path out = Files.createDirectories(dir.resolve(name).resolve("sub")).getParent();
        for (int i = 0; i < n; i++) {
            byte[] bytes = new byte[i == 0 ? (1 << 20) + 17 : random.nextInt(4096)];
            random.nextBytes(bytes);
            Files.write(out.resolve(i == n - 1 ? "sub/f" + i + ".bin" : "f" + i + ".bin"), bytes);
        }
        return out;
    }

    /** The hashes computed one file after the other, straight from the bytes. */
    private static Map<String, String> expected(Path out) throws Exception {
        Map<String, String> files = new java.util.TreeMap<>();
        try (var walk = Files.walk(out)) {
            for (Path p : walk.filter(Files::isRegularFile).toList()) {
                byte[] digest = MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(p));
                files.put(out.relativize(p).toString().replace('\\', '/'), HexFormat.of().formatHex(digest));
            }
        }
        return files;
    }
}
