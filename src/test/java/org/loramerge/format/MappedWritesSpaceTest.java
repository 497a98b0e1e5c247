package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Review: a write through a mapping that the file system cannot back is a bus error that Java 17
 * delivers asynchronously (the JDK's Cleaner then ends the JVM with exit 1 while unmapping), so a
 * mapped-writes shard larger than its file system's free space is refused up front, typed, before
 * the file exists.
 */
class MappedWritesSpaceTest {
    @TempDir
    Path dir;

    @Test
    void mappedWritesOfAShardLargerThanTheFreeSpaceAreRefusedBeforeTheFileExists() throws IOException {
        long usable = Files.getFileStore(dir).getUsableSpace();
        long elements = usable / 4 + (1L << 20); // f32: more bytes than the file system has free
        Path f = dir.resolve("model.safetensors");
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("w", DType.F32, new long[] {elements}));
        IOException e = assertThrows(IOException.class, () -> SafetensorsWriter.create(f, entries, Map.of(), true));
        assertTrue(e.getMessage().contains("No space left on device") && e.getMessage().contains(f.toString()), e.getMessage());
        assertFalse(Files.exists(f));
    }

    @Test
    void mappedWritesThatFitAreWrittenAsPositionalOnes() throws IOException {
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("a", DType.U8, new long[] {5000}),
                new SafetensorsWriter.Entry("b", DType.U8, new long[] {3}));
        byte[][] files = new byte[2][];
        for (int m = 0; m < 2; m++) {
            Path f = dir.resolve("m" + m + ".safetensors");
            try (SafetensorsWriter w = SafetensorsWriter.create(f, entries, Map.of(), m == 1)) {
                byte[] a = new byte[5000];
                for (int i = 0; i < a.length; i++) {
                    a[i] = (byte) (i * 7);
                }
                w.writeAt(5000, ByteBuffer.wrap(new byte[] {1, 2, 3}));
                w.writeAt(4096, ByteBuffer.wrap(a, 4096, 904));
                w.writeAt(0, ByteBuffer.wrap(a, 0, 4096));
                w.finish();
            }
            files[m] = Files.readAllBytes(f);
        }
        assertEquals(ByteBuffer.wrap(files[0]), ByteBuffer.wrap(files[1]));
    }
}
