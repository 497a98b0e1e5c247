package org.loramerge.format;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.testutil.TinyModels.concat;
import static org.loramerge.testutil.TinyModels.f32;
import static org.loramerge.testutil.TinyModels.le64;
import static org.loramerge.testutil.TinyModels.pattern;
import static org.loramerge.testutil.TinyModels.rawFile;
import static org.loramerge.testutil.TinyModels.writeBytes;
import static org.loramerge.testutil.TinyModels.writeRaw;

import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.format.SafetensorsException.Reason;
import org.loramerge.testutil.TinyModels;

/**
 * One hand-built file per way a safetensors file can be malformed (safetensors src/tensor.rs
 * {@code SafeTensorError}), and the legal corners the reference implementation accepts.
 */
class SafetensorsFileTest {
    @TempDir
    Path dir;

    /** A header entry, as JSON text. */
    private static String entry(String name, String dtype, String shape, long begin, long end) {
        return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" + begin + "," + end + "]}";
    }

    private static final String A_F32_2 = entry("a", "F32", "[2]", 0, 8);
    private static final byte[] A_DATA = f32(1.5, -2.25);

    /** Opens {@code file}, expects {@code reason}, and checks that the message names the file and, if given, the tensor. */
    private static SafetensorsException assertRejected(Path file, Reason reason, String tensor) {
        SafetensorsException e = assertThrows(SafetensorsException.class, () -> SafetensorsFile.open(file).close());
        assertEquals(reason, e.reason(), e::getMessage);
        assertEquals(file, e.path());
        assertTrue(e.getMessage().contains(file.toString()), () -> "message does not name the file: " + e.getMessage());
        if (tensor != null) {
            assertEquals(tensor, e.tensor(), e::getMessage);
            assertTrue(e.getMessage().contains("'" + tensor + "'"), () -> "message does not name tensor " + tensor + ": " + e.getMessage());
        }
        return e;
    }

    // ------------------------------------------------------------------ one test per reason

    @Test
    void fileShorterThanTheLengthPrefixIsHeaderTooSmall() {
        Path file = writeBytes(dir.resolve("short.safetensors"), new byte[] {2, 0, 0, 0, 0});
        assertRejected(file, Reason.HEADER_TOO_SMALL, null);
        Path empty = writeBytes(dir.resolve("empty.safetensors"), new byte[0]);
        assertRejected(empty, Reason.HEADER_TOO_SMALL, null);
    }

    @Test
    void headerLengthAboveOneHundredMillionIsHeaderTooLarge() {
        Path file = writeBytes(dir.resolve("big-n.safetensors"), concat(le64(100_000_001L), "{}".getBytes(StandardCharsets.UTF_8)));
        SafetensorsException e = assertRejected(file, Reason.HEADER_TOO_LARGE, null);
        assertTrue(e.getMessage().contains("100000001"), e::getMessage);
        // a length with the top bit set is a huge unsigned number, not a negative one
        Path negative = writeBytes(dir.resolve("neg-n.safetensors"), concat(le64(-1L), "{}".getBytes(StandardCharsets.UTF_8)));
        assertRejected(negative, Reason.HEADER_TOO_LARGE, null);
        // exactly the limit is allowed by the length check; this file is simply too short for it
        Path limit = writeBytes(dir.resolve("limit-n.safetensors"), concat(le64(100_000_000L), "{}".getBytes(StandardCharsets.UTF_8)));
        assertRejected(limit, Reason.INVALID_HEADER_LENGTH, null);
    }

    @Test
    void headerLengthPastTheEndOfTheFileIsInvalidHeaderLength() {
        Path file = writeBytes(dir.resolve("cut-header.safetensors"), concat(le64(64), "{\"a\":".getBytes(StandardCharsets.UTF_8)));
        SafetensorsException e = assertRejected(file, Reason.INVALID_HEADER_LENGTH, null);
        assertTrue(e.getMessage().contains("truncated"), e::getMessage);
    }

    @Test
    void headerThatIsNotUtf8IsInvalidHeaderUtf8() {
        byte[] header = {'{', (byte) 0xFF, (byte) 0xFE, '}'};
        Path file = writeBytes(dir.resolve("latin.safetensors"), rawFile(header, new byte[0]));
        assertRejected(file, Reason.INVALID_HEADER_UTF8, null);
    }

    @Test
    void headerThatDoesNotStartWithABraceIsInvalidHeaderStart() {
        Path array = writeRaw(dir.resolve("array.safetensors"), "[{" + A_F32_2 + "}]", A_DATA);
        assertRejected(array, Reason.INVALID_HEADER_START, null);
        Path text = writeRaw(dir.resolve("text.safetensors"), "garbage!", new byte[0]);
        assertRejected(text, Reason.INVALID_HEADER_START, null);
    }

    static Stream<Arguments> invalidJsonHeaders() {
        return Stream.of(
                Arguments.of("not JSON", "{this is not json}", A_DATA, null),
                Arguments.of("trailing garbage after the object", "{" + A_F32_2 + "} xyz", A_DATA, null),
                Arguments.of("a second object after the first", "{" + A_F32_2 + "}{}", A_DATA, null),
                Arguments.of("unterminated object", "{" + A_F32_2, A_DATA, null),
                Arguments.of("__metadata__ value not a string", "{\"__metadata__\":{\"format\":1}," + A_F32_2 + "}", A_DATA, null),
                Arguments.of("__metadata__ not an object", "{\"__metadata__\":\"pt\"," + A_F32_2 + "}", A_DATA, null),
                Arguments.of("negative shape", "{" + entry("a", "F32", "[-2]", 0, 8) + "}", A_DATA, "a"),
                Arguments.of("fractional shape", "{" + entry("a", "F32", "[2.0]", 0, 8) + "}", A_DATA, "a"),
                Arguments.of("shape not an array", "{" + entry("a", "F32", "2", 0, 8) + "}", A_DATA, "a"),
                Arguments.of("missing dtype", "{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", A_DATA, "a"),
                Arguments.of("dtype not a string", "{\"a\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", A_DATA, "a"),
                Arguments.of("missing data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", A_DATA, "a"),
                Arguments.of("data_offsets of length 3", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", A_DATA, "a"),
                Arguments.of("negative data_offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", A_DATA, "a"),
                Arguments.of("entry not an object", "{\"a\":5}", new byte[0], "a"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("invalidJsonHeaders")
    void malformedHeaderJsonIsInvalidHeaderJson(String what, String header, byte[] data, String tensor) {
        Path file = writeRaw(dir.resolve("bad-json.safetensors"), header, data);
        assertRejected(file, Reason.INVALID_HEADER_JSON, tensor);
    }

    @Test
    void dtypeTheFormatDoesNotKnowIsUnknownDtype() {
        Path file = writeRaw(dir.resolve("q4.safetensors"), "{" + entry("w", "Q4_K", "[2]", 0, 8) + "}", A_DATA);
        SafetensorsException e = assertRejected(file, Reason.UNKNOWN_DTYPE, "w");
        assertTrue(e.getMessage().contains("Q4_K"), e::getMessage);
        // dtype names are case-sensitive in the format (serde enum variants)
        Path lower = writeRaw(dir.resolve("lower.safetensors"), "{" + entry("w", "f32", "[2]", 0, 8) + "}", A_DATA);
        assertRejected(lower, Reason.UNKNOWN_DTYPE, "w");
    }

    @Test
    void tensorNamedTwiceIsDuplicateTensor() {
        String header = "{" + entry("dup.weight", "F32", "[1]", 0, 4) + "," + entry("dup.weight", "F32", "[1]", 4, 8) + "}";
        Path file = writeRaw(dir.resolve("dup.safetensors"), header, A_DATA);
        SafetensorsException e = assertRejected(file, Reason.DUPLICATE_TENSOR, null);
        assertTrue(e.getMessage().contains("dup.weight"), () -> "message does not name the duplicated tensor: " + e.getMessage());
    }

    static Stream<Arguments> badOffsets() {
        return Stream.of(
                Arguments.of("hole between tensors",
                        "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}", 12, "b"),
                Arguments.of("overlapping tensors",
                        "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12, "b"),
                Arguments.of("first tensor not at 0",
                        "{" + entry("a", "F32", "[1]", 4, 8) + "}", 8, "a"),
                Arguments.of("end before begin",
                        "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 4, 0) + "}", 4, "b"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("badOffsets")
    void offsetsThatDoNotTileTheDataAreInvalidOffset(String what, String header, int dataBytes, String tensor) {
        Path file = writeRaw(dir.resolve("offsets.safetensors"), header, pattern(dataBytes, 1));
        assertRejected(file, Reason.INVALID_OFFSET, tensor);
    }

    @Test
    void byteSizeThatIsNotElementsTimesDtypeSizeIsTensorInvalidInfo() {
        Path file = writeRaw(dir.resolve("size.safetensors"), "{" + entry("w", "F32", "[2]", 0, 12) + "}", pattern(12, 2));
        SafetensorsException e = assertRejected(file, Reason.TENSOR_INVALID_INFO, "w");
        assertTrue(e.getMessage().contains("12") && e.getMessage().contains("8"), e::getMessage);
    }

    @Test
    void subByteTensorNotEndingOnAByteIsMisalignedSlice() {
        Path file = writeRaw(dir.resolve("f4.safetensors"), "{" + entry("packed", "F4", "[3]", 0, 2) + "}", pattern(2, 3));
        assertRejected(file, Reason.MISALIGNED_SLICE, "packed");
    }

    @Test
    void dataSectionShorterOrLongerThanTheTensorsIsMetadataIncompleteBuffer() {
        Path truncated = writeRaw(dir.resolve("truncated.safetensors"), "{" + A_F32_2 + "}", new byte[4]);
        SafetensorsException e = assertRejected(truncated, Reason.METADATA_INCOMPLETE_BUFFER, null);
        assertTrue(e.getMessage().contains("truncated"), e::getMessage);
        Path trailing = writeRaw(dir.resolve("trailing.safetensors"), "{" + A_F32_2 + "}", concat(A_DATA, new byte[] {1, 2, 3}));
        SafetensorsException t = assertRejected(trailing, Reason.METADATA_INCOMPLETE_BUFFER, null);
        assertTrue(t.getMessage().contains("trailing"), t::getMessage);
    }

    @Test
    void shapeWhoseSizeOverflows64BitsIsValidationOverflow() {
        // 2^32 * 2^32 elements: the element count itself overflows
        Path count = writeRaw(dir.resolve("count.safetensors"), "{" + entry("huge", "U8", "[4294967296,4294967296]", 0, 0) + "}", new byte[0]);
        assertRejected(count, Reason.VALIDATION_OVERFLOW, "huge");
        // 2^61 F32 elements: the count fits, the bit size does not
        Path bits = writeRaw(dir.resolve("bits.safetensors"), "{" + entry("huge", "F32", "[2305843009213693952]", 0, 0) + "}", new byte[0]);
        assertRejected(bits, Reason.VALIDATION_OVERFLOW, "huge");
    }

    // ------------------------------------------------------------------ what the format allows

    @Test
    void whitespaceAroundTheHeaderJsonIsAccepted() throws Exception {
        Path file = writeRaw(dir.resolve("ws.safetensors"), " \n\t {" + A_F32_2 + "} \t\n  ", A_DATA);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            TensorInfo a = f.tensor("a");
            ByteBuffer b = f.readAll(a);
            assertEquals(1.5f, b.getFloat(0));
            assertEquals(-2.25f, b.getFloat(4));
        }
    }

    @Test
    void emptyAndZeroRankTensorsAreLegal() throws Exception {
        String header = "{" + entry("empty", "F32", "[0]", 0, 0) + "," + entry("scalar", "F32", "[]", 0, 4) + ","
                + entry("zero_dim", "BF16", "[2,0,3]", 4, 4) + "," + entry("after", "U8", "[2]", 4, 6) + "}";
        Path file = writeRaw(dir.resolve("corners.safetensors"), header, concat(f32(3.5), new byte[] {7, 9}));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertEquals(List.of("empty", "scalar", "zero_dim", "after"), f.tensors().stream().map(TensorInfo::name).toList());
            TensorInfo empty = f.tensor("empty");
            assertEquals(0, empty.numElements());
            assertEquals(0, empty.sizeInBytes());
            TensorInfo scalar = f.tensor("scalar");
            assertEquals(0, scalar.rank());
            assertEquals(1, scalar.numElements());
            assertEquals(3.5f, f.readAll(scalar).getFloat(0));
            assertEquals(0, f.tensor("zero_dim").sizeInBytes());
            try (MappedRegion r = f.map(empty, 0, 0)) {
                assertEquals(0, r.length());
            }
            ByteBuffer after = f.readAll(f.tensor("after"));
            assertEquals(7, after.get(0));
            assertEquals(9, after.get(1));
        }
    }

    @Test
    void nullMetadataIsAccepted() throws Exception {
        Path file = writeRaw(dir.resolve("meta-null.safetensors"), "{\"__metadata__\":null," + A_F32_2 + "}", A_DATA);
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            assertTrue(f.metadata().isEmpty());
            assertEquals(-2.25f, f.readAll(f.tensor("a")).getFloat(4));
        }
    }

    @ParameterizedTest
    @EnumSource(DType.class)
    void everyDtypeRoundTripsThroughTheWriterWithItsBytesUnchanged(DType dtype) throws Exception {
        long[] shape = {2, 4}; // 8 elements: whole bytes for 4- and 6-bit types too
        int size = 8 * dtype.bits() / 8;
        byte[] data = pattern(size, dtype.ordinal());
        byte[] tailData = {42, 43, 44};
        Path file = TinyModels.writeSafetensors(dir.resolve(dtype + ".safetensors"), List.of(
                new TinyModels.Tensor("x", dtype, shape, data),
                new TinyModels.Tensor("tail", DType.U8, new long[] {3}, tailData)));
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            TensorInfo x = f.tensor("x");
            assertEquals(dtype, x.dtype());
            assertArrayEquals(shape, x.shape());
            assertEquals(size, x.sizeInBytes());
            assertArrayEquals(data, bytes(f.readAll(x)));
            try (MappedRegion r = f.map(x, 0, size)) {
                assertArrayEquals(data, bytes(r.bytes()));
            }
            assertArrayEquals(tailData, bytes(f.readAll(f.tensor("tail"))));
            assertEquals(Files.size(file), f.tensor("tail").dataStart() + 3);
        }
    }

    @Test
    void writerPadsTheHeaderWithSpacesToAMultipleOf8AndRecordsFormatPt() throws Exception {
        boolean sawPadding = false;
        for (int nameLength = 1; nameLength <= 8; nameLength++) {
            String name = "n".repeat(nameLength);
            Path file = TinyModels.writeSafetensors(dir.resolve("pad" + nameLength + ".safetensors"),
                    List.of(new TinyModels.Tensor(name, DType.U8, new long[] {3}, new byte[] {1, 2, 3})));
            byte[] raw = Files.readAllBytes(file);
            long n = ByteBuffer.wrap(raw, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
            assertEquals(0, n % 8, "header length " + n + " is not a multiple of 8");
            String header = new String(raw, 8, (int) n, StandardCharsets.UTF_8);
            String json = header.stripTrailing();
            assertTrue(json.endsWith("}"), header);
            assertEquals(" ".repeat(header.length() - json.length()), header.substring(json.length()), "padding must be spaces");
            sawPadding |= header.length() > json.length();
            assertEquals("{\"format\":\"pt\"}", SafetensorsFile.JSON.readTree(json).get("__metadata__").toString(), json);
            try (SafetensorsFile f = SafetensorsFile.open(file)) {
                assertEquals(Map.of("format", "pt"), f.metadata());
                assertEquals(n, f.headerSize());
                assertEquals(8 + n, f.tensor(name).dataStart());
                assertArrayEquals(new byte[] {1, 2, 3}, bytes(f.readAll(f.tensor(name))));
            }
        }
        assertTrue(sawPadding, "no header needed padding, so the padding was not tested");
    }

    // ------------------------------------------------------------------ tensors over 2 GiB

    @Test
    void tensorLargerThan2GiBIsReadThroughWindowsPastTheIntRange() throws Exception {
        long big = 5L << 29; // 2.5 GiB of U8
        String header = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("big", "U8", "[" + big + "]", 0, big) + ","
                + entry("tail", "F32", "[2]", big, big + 8) + "}";
        byte[] headerBytes = header.getBytes(StandardCharsets.UTF_8);
        long dataStart = 8 + headerBytes.length;
        byte[] lastBytes = pattern(4096, 5);
        byte[] across = pattern(16, 6); // straddles the 2 GiB mark inside the tensor
        long acrossOffset = (1L << 31) - 8;
        Path file = dir.resolve("sparse.safetensors");
        try (RandomAccessFile raf = new RandomAccessFile(file.toFile(), "rw")) {
            raf.setLength(dataStart + big + 8); // sparse: only the pages written below take disk space
            raf.write(le64(headerBytes.length));
            raf.write(headerBytes);
            raf.seek(dataStart + acrossOffset);
            raf.write(across);
            raf.seek(dataStart + big - lastBytes.length);
            raf.write(lastBytes);
            raf.write(f32(6.25, -0.5));
        }
        try (SafetensorsFile f = SafetensorsFile.open(file)) {
            TensorInfo t = f.tensor("big");
            assertEquals(big, t.sizeInBytes());
            assertEquals(big, t.numElements());
            try (MappedRegion r = f.map(t, big - lastBytes.length, lastBytes.length)) {
                assertArrayEquals(lastBytes, bytes(r.bytes()));
            }
            try (MappedRegion r = f.map(t, acrossOffset, across.length)) {
                assertArrayEquals(across, bytes(r.bytes()));
            }
            // the largest window one mapping may have, ending at the tensor's last byte
            try (MappedRegion r = f.map(t, big - MappedRegion.MAX_WINDOW, MappedRegion.MAX_WINDOW)) {
                ByteBuffer b = r.bytes();
                assertEquals(MappedRegion.MAX_WINDOW, b.capacity());
                assertEquals(lastBytes[lastBytes.length - 1], b.get(b.capacity() - 1));
                assertEquals(lastBytes[0], b.get(b.capacity() - lastBytes.length));
            }
            assertThrows(IllegalArgumentException.class, () -> f.readAll(t), "a >2 GiB tensor cannot be read in one buffer");
            assertThrows(IllegalArgumentException.class, () -> f.map(t, big - 8, 16), "a window past the tensor's end");
            ByteBuffer tail = f.readAll(f.tensor("tail"));
            assertEquals(6.25f, tail.getFloat(0));
            assertEquals(-0.5f, tail.getFloat(4));
        }
    }

    private static byte[] bytes(ByteBuffer b) {
        ByteBuffer d = b.duplicate();
        byte[] out = new byte[d.remaining()];
        d.get(out);
        return out;
    }
}
