package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.locks.ReentrantLock;
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
        assumeTrue(Files.getFileStore(dir).getTotalSpace() > 0, "a file system that keeps a count of its room");
        long usable = Files.getFileStore(dir).getUsableSpace();
        long elements = usable / 4 + (1L << 20); // f32: more bytes than the file system has free
        Path f = dir.resolve("model.safetensors");
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("w", DType.F32, new long[] {elements}));
        IOException e = assertThrows(IOException.class, () -> SafetensorsWriter.create(f, entries, Map.of(), WriteMode.MAPPED));
        assertTrue(e.getMessage().contains("No space left on device") && e.getMessage().contains(f.toString()), e.getMessage());
        assertFalse(Files.exists(f));
    }

    @Test
    void mappedWritesThatFitAreWrittenAsPositionalOnes() throws IOException {
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("a", DType.U8, new long[] {5000}),
                new SafetensorsWriter.Entry("b", DType.U8, new long[] {3}));
        WriteMode[] modes = {WriteMode.POSITIONAL, WriteMode.MAPPED, WriteMode.MIXED};
        byte[][] files = new byte[modes.length][];
        for (int m = 0; m < modes.length; m++) {
            Path f = dir.resolve("m" + m + ".safetensors");
            try (SafetensorsWriter w = SafetensorsWriter.create(f, entries, Map.of(), modes[m])) {
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
        assertEquals(ByteBuffer.wrap(files[0]), ByteBuffer.wrap(files[2]));
    }

    @Test
    void mixedWritesGoThroughAMappingWhileAnotherThreadHasTheFilesTurnAndAreCountedSo() throws Exception {
        int n = 3 * 4096 + 100;
        byte[] a = new byte[n];
        for (int i = 0; i < n; i++) {
            a[i] = (byte) (i * 31 + 7);
        }
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("a", DType.U8, new long[] {n}));
        Path f = dir.resolve("mixed.safetensors");
        try (SafetensorsWriter w = SafetensorsWriter.create(f, entries, Map.of(), WriteMode.MIXED)) {
            assertEquals(WriteMode.MIXED, w.writeMode());
            w.writeAt(0, ByteBuffer.wrap(a, 0, 5000)); // the turn is free: positional
            assertEquals(0, w.blocksMapped());
            ReentrantLock turn = w.positionalTurn();
            turn.lock(); // this thread writing the file: another thread's block goes through a mapping, on a page the first block shares
            try {
                Thread t = new Thread(() -> {
                    try {
                        w.writeAt(5000, ByteBuffer.wrap(a, 5000, n - 5000));
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                });
                t.start();
                t.join();
            } finally {
                turn.unlock();
            }
            assertEquals(1, w.blocksMapped());
            w.finish();
        }
        byte[] file = Files.readAllBytes(f);
        assertEquals(ByteBuffer.wrap(a), ByteBuffer.wrap(file, file.length - n, n));
    }

    @Test
    void autoWritesMixedIntoMemoryAndPositionallyOntoDisks() throws IOException {
        assertTrue(WriteMode.inMemory("tmpfs") && WriteMode.inMemory("ramfs"));
        assertFalse(WriteMode.inMemory("ext4") || WriteMode.inMemory("xfs") || WriteMode.inMemory("overlay"));
        Path shm = Path.of("/dev/shm");
        if (Files.isDirectory(shm) && Files.getFileStore(shm).type().equals("tmpfs")) {
            assertEquals(WriteMode.MIXED, WriteMode.AUTO.resolve(shm));
        }
        if (!Files.getFileStore(dir).type().equals("tmpfs") && !Files.getFileStore(dir).type().equals("ramfs")) {
            assertEquals(WriteMode.POSITIONAL, WriteMode.AUTO.resolve(dir));
        }
        assertEquals(WriteMode.POSITIONAL, WriteMode.AUTO.resolve(dir.resolve("no/such/folder")), "a file system it cannot find: positional");
        assertEquals(WriteMode.MAPPED, WriteMode.MAPPED.resolve(dir));
        assertEquals(WriteMode.POSITIONAL, WriteMode.parse("pwrite"));
        assertEquals(WriteMode.MIXED, WriteMode.parse(" Mixed "));
        assertNull(WriteMode.parse("direct"));
    }
}
