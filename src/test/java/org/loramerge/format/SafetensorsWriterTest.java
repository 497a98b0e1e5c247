package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Late tensors: a length known only after the data that precedes it in the file is written. */
class SafetensorsWriterTest {
    @TempDir
    Path dir;

    private static ByteBuffer bytes(int n, int seed) {
        ByteBuffer b = ByteBuffer.allocate(n);
        for (int i = 0; i < n; i++) {
            b.put((byte) (seed + 7 * i));
        }
        return b.flip();
    }

    private static byte[] read(SafetensorsFile f, String name) throws Exception {
        ByteBuffer b = f.readAll(f.tensor(name));
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    @Test
    void aLateTensorGoesAfterTheOthersAndTheHeaderKeepsItsReservedLength() throws Exception {
        List<SafetensorsWriter.Entry> entries = List.of(
                new SafetensorsWriter.Entry("a.weight", DType.U8, new long[] {300, 1}),
                SafetensorsWriter.Entry.late("a.weight.quant_state", DType.U8, 1000),
                new SafetensorsWriter.Entry("b.weight", DType.F32, new long[] {5}));
        int reserved = SafetensorsWriter.header(entries, Map.of("format", "pt")).length;
        Path file = dir.resolve("late.safetensors");
        byte[] json = "{\"quant_type\": \"nf4\", \"nested_offset\": 0.012}".getBytes(StandardCharsets.UTF_8);
        try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of("format", "pt"))) {
            w.write(bytes(300, 1));
            w.writeLate("a.weight.quant_state", ByteBuffer.wrap(json)); // known once a.weight is done, before b.weight
            w.write(bytes(20, 2));
            assertEquals(320 + json.length, w.finish());
        }
        assertEquals(reserved + 320 + json.length, Files.size(file), "the header has the room reserved for the longest JSON");
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertArrayEquals(bytes(300, 1).array(), read(f, "a.weight"));
            assertArrayEquals(bytes(20, 2).array(), read(f, "b.weight"));
            assertArrayEquals(json, read(f, "a.weight.quant_state"), "exactly the given bytes, no padding");
            assertArrayEquals(new long[] {json.length}, f.tensor("a.weight.quant_state").shape());
            assertEquals(reserved, f.tensor("a.weight").dataStart(), "every other tensor's offset was fixed from the start");
            assertEquals(reserved + 320, f.tensor("a.weight.quant_state").dataStart(), "late tensors follow the others");
            assertEquals("pt", f.metadata().get("format"));
        }
        ByteBuffer prefix = ByteBuffer.wrap(Files.readAllBytes(file), 0, 8).order(ByteOrder.LITTLE_ENDIAN);
        assertEquals(reserved - 8, prefix.getLong());
        String header = new String(Files.readAllBytes(file), 8, reserved - 8, StandardCharsets.UTF_8);
        assertTrue(header.endsWith(" ") && header.trim().endsWith("}"), "trailing spaces pad the shorter header: [" + header + "]");
    }

    @Test
    void aFileWithoutLateTensorsIsWrittenAsBefore() throws Exception {
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("x", DType.U8, new long[] {3}));
        Path file = dir.resolve("plain.safetensors");
        try (SafetensorsWriter w = SafetensorsWriter.create(file, entries, Map.of())) {
            w.write(bytes(3, 5));
            w.finish();
        }
        byte[] header = SafetensorsWriter.header(entries, Map.of());
        byte[] all = Files.readAllBytes(file);
        assertArrayEquals(header, java.util.Arrays.copyOf(all, header.length));
        assertEquals(header.length + 3, all.length);
    }

    @Test
    void lateTensorMisuseIsACallerBug() throws Exception {
        List<SafetensorsWriter.Entry> entries = List.of(new SafetensorsWriter.Entry("x", DType.U8, new long[] {2}),
                SafetensorsWriter.Entry.late("s", DType.F32, 4));
        try (SafetensorsWriter w = SafetensorsWriter.create(dir.resolve("bad.safetensors"), entries, Map.of())) {
            assertThrows(IllegalArgumentException.class, () -> w.writeLate("s", bytes(20, 0)), "over the declared maximum");
            assertThrows(IllegalArgumentException.class, () -> w.writeLate("s", bytes(6, 0)), "not a whole number of F32 elements");
            assertThrows(IllegalArgumentException.class, () -> w.writeLate("x", bytes(2, 0)), "x is not late");
            w.write(bytes(2, 0));
            assertThrows(IllegalStateException.class, w::finish, "the late tensor was never given");
            w.writeLate("s", bytes(8, 0));
            assertThrows(IllegalStateException.class, () -> w.writeLate("s", bytes(8, 0)), "given twice");
        }
        assertThrows(IllegalArgumentException.class, () -> SafetensorsWriter.create(dir.resolve("2d.safetensors"),
                List.of(new SafetensorsWriter.Entry("m", DType.U8, new long[] {2, 2}, true)), Map.of()));
    }
}
