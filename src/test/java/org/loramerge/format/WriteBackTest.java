package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Starting the disk on written ranges: there on 64-bit Linux, harmless to the bytes, and a writer that uses it only for positional writes. */
class WriteBackTest {
    @TempDir
    Path dir;

    private static boolean linux64() {
        String arch = System.getProperty("os.arch", "");
        return System.getProperty("os.name", "").toLowerCase(Locale.ROOT).startsWith("linux")
                && (arch.equals("amd64") || arch.equals("x86_64") || arch.equals("aarch64"));
    }

    @Test
    void onLinuxJnaBindsTheCall() {
        assumeTrue(linux64(), "sync_file_range is Linux's");
        assertTrue(WriteBack.available(), "JNA and its Linux native part are on the class path and load");
    }

    @Test
    void aWrittenRangeIsStartedAndAClosedHandleStartsNothing() throws Exception {
        assumeTrue(WriteBack.available());
        Path file = dir.resolve("f.bin");
        byte[] data = new byte[3 << 20];
        for (int i = 0; i < data.length; i++) {
            data[i] = (byte) (i * 31 + 7);
        }
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
            ch.write(ByteBuffer.wrap(data), 0);
            WriteBack wb = WriteBack.open(file);
            assertNotNull(wb);
            assertTrue(wb.start(0, data.length));
            assertTrue(wb.start(1 << 20, 4096), "again, part of it");
            assertFalse(wb.start(0, 0), "an empty range starts nothing");
            wb.close();
            assertFalse(wb.start(0, data.length), "closed");
            wb.close(); // twice is fine
        }
        assertArrayEquals(data, Files.readAllBytes(file), "the bytes are the ones written");
    }

    @Test
    void aMissingFileHasNoHandle() {
        assumeTrue(WriteBack.available());
        assertNull(WriteBack.open(dir.resolve("missing")));
    }

    @Test
    void aFileNamedInAnyScriptIsOpened() throws Exception {
        assumeTrue(WriteBack.available());
        Path file = dir.resolve("modèle-模型.safetensors");
        try {
            Files.write(file, new byte[] {1, 2, 3});
        } catch (java.nio.file.InvalidPathException e) {
            assumeTrue(false, "this JVM cannot name the file: " + e.getMessage());
        }
        try (WriteBack wb = WriteBack.open(file)) {
            assertNotNull(wb, "the name reaches open(2) in the encoding Java names files with");
            assertTrue(wb.start(0, 3));
        }
    }

    @Test
    void onlyPositionalWritesWithWriteBackAskedForStartTheDiskAndTheBytesAreTheSame() throws Exception {
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("a", DType.F32, new long[] {1 << 18}),
                new SafetensorsWriter.Entry("b", DType.BF16, new long[] {1000}));
        byte[] expected = null;
        Object[][] cases = {{WriteMode.POSITIONAL, true, WriteBack.available()}, {WriteMode.POSITIONAL, false, false},
            {WriteMode.MIXED, true, false}, {WriteMode.MAPPED, true, false}};
        for (Object[] c : cases) {
            WriteMode mode = (WriteMode) c[0];
            Path file = dir.resolve(mode + "-" + c[1] + ".safetensors");
            try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of("format", "pt"), mode, (Boolean) c[1])) {
                assertEquals(c[2], w.startsWriteBack(), mode + ", write-back asked " + c[1]);
                ByteBuffer a = ByteBuffer.allocate(4 << 18);
                for (int i = 0; i < a.capacity(); i++) {
                    a.put((byte) (i ^ (i >> 8)));
                }
                a.flip();
                // the second half first, from another offset, as workers do
                w.writeAt(2 << 18, a.duplicate().position(2 << 18));
                w.writeAt(0, a.duplicate().limit(2 << 18));
                w.writeAt(4 << 18, ByteBuffer.allocate(2000).put(0, (byte) 5));
                w.finish();
            }
            byte[] got = Files.readAllBytes(file);
            if (expected == null) {
                expected = got;
            } else {
                assertArrayEquals(expected, got, mode + ", write-back asked " + c[1]);
            }
        }
    }
}
