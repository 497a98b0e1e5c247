package org.loramerge.format;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.CharBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import static org.loramerge.format.SafetensorsException.Reason.*;

/**
 * A safetensors file opened read-only: the validated header, and the tensors' bytes through
 * memory-mapped windows. Validation follows the reference implementation (safetensors
 * src/tensor.rs {@code SafeTensors::read_metadata} and {@code Metadata::validate}); a file that
 * passes here loads there.
 */
public final class SafetensorsFile implements AutoCloseable {
    /** safetensors: a header larger than 100,000,000 bytes is rejected (MAX_HEADER_SIZE). */
    public static final long MAX_HEADER_SIZE = 100_000_000L;

    static final ObjectMapper JSON = new ObjectMapper()
            .enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS); // serde rejects trailing characters

    private final Path path;
    private final FileChannel channel;
    private final long headerSize;
    private final Map<String, String> metadata;
    private final Map<String, TensorInfo> tensors;

    private SafetensorsFile(Path path, FileChannel channel, long headerSize, Map<String, String> metadata,
                            Map<String, TensorInfo> tensors) {
        this.path = path;
        this.channel = channel;
        this.headerSize = headerSize;
        this.metadata = metadata;
        this.tensors = tensors;
    }

    /** Opens and validates {@code path}. The file is never written. */
    public static SafetensorsFile open(Path path) throws SafetensorsException {
        InputFolder.requireRegularFile(path); // before opening: opening a named pipe blocks
        FileChannel channel;
        try {
            channel = FileChannel.open(path, StandardOpenOption.READ);
        } catch (NoSuchFileException e) {
            throw new SafetensorsException(IO, path, null, "file not found");
        } catch (IOException e) {
            throw new SafetensorsException(IO, path, null, "cannot open: " + e.getMessage(), e);
        }
        try {
            SafetensorsFile f = read(path, channel);
            channel = null;
            return f;
        } finally {
            if (channel != null) {
                try {
                    channel.close();
                } catch (IOException ignored) {
                    // the read failure is the error worth reporting
                }
            }
        }
    }

    private static SafetensorsFile read(Path path, FileChannel channel) throws SafetensorsException {
        long fileSize;
        try {
            fileSize = channel.size();
        } catch (IOException e) {
            throw new SafetensorsException(IO, path, null, "cannot read size: " + e.getMessage(), e);
        }
        if (fileSize < 8) {
            throw new SafetensorsException(HEADER_TOO_SMALL, path, null,
                    "file is " + fileSize + " bytes, shorter than the 8-byte header length; the file is truncated or not safetensors");
        }
        ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN);
        readFully(path, channel, len, 0);
        long n = len.getLong(0);
        if (n < 0 || n > MAX_HEADER_SIZE) {
            throw new SafetensorsException(HEADER_TOO_LARGE, path, null,
                    "header length " + Long.toUnsignedString(n) + " exceeds the format's limit of " + MAX_HEADER_SIZE
                            + " bytes; the file is corrupt or not safetensors; download or copy it again");
        }
        if (8 + n > fileSize) {
            throw new SafetensorsException(INVALID_HEADER_LENGTH, path, null,
                    "header length " + n + " runs past the end of the " + fileSize + "-byte file; the file is truncated");
        }
        ByteBuffer headerBytes = ByteBuffer.allocate((int) n);
        readFully(path, channel, headerBytes, 8);
        headerBytes.flip();
        String header;
        try {
            CharBuffer chars = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(headerBytes);
            header = chars.toString();
        } catch (CharacterCodingException e) {
            throw new SafetensorsException(INVALID_HEADER_UTF8, path, null, "header is not valid UTF-8; the file is corrupt: download or copy it again", e);
        }
        if (!header.stripLeading().startsWith("{")) {
            throw new SafetensorsException(INVALID_HEADER_START, path, null,
                    "header does not start with '{'; the file is corrupt or not safetensors; download or copy it again");
        }
        JsonNode root;
        try {
            root = JSON.readTree(header);
        } catch (JsonProcessingException e) {
            String msg = e.getOriginalMessage();
            if (msg != null && msg.startsWith("Duplicate field")) {
                throw new SafetensorsException(DUPLICATE_TENSOR, path, null,
                        "header names an entry twice (" + msg + "); the file is ambiguous", e);
            }
            throw new SafetensorsException(INVALID_HEADER_JSON, path, null, "header is not valid JSON (" + msg + "); the file is corrupt: download or copy it again", e);
        }
        if (!(root instanceof ObjectNode)) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, null, "header is not a JSON object");
        }
        long dataStart = 8 + n;
        Map<String, String> metadata = new LinkedHashMap<>();
        List<Entry> entries = new ArrayList<>();
        for (Map.Entry<String, JsonNode> field : root.properties()) {
            if (field.getKey().equals("__metadata__")) {
                readMetadata(path, field.getValue(), metadata);
            } else {
                entries.add(parseEntry(path, field.getKey(), field.getValue()));
            }
        }
        Map<String, TensorInfo> tensors = validate(path, entries, dataStart, fileSize);
        return new SafetensorsFile(path, channel, n, Collections.unmodifiableMap(metadata), tensors);
    }

    private static void readMetadata(Path path, JsonNode node, Map<String, String> out) throws SafetensorsException {
        if (node.isNull()) {
            return;
        }
        if (!node.isObject()) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, null, "__metadata__ is not an object of strings");
        }
        for (Map.Entry<String, JsonNode> e : node.properties()) {
            // safetensors: __metadata__ is HashMap<String, String>; any other value type is rejected
            if (!e.getValue().isTextual()) {
                throw new SafetensorsException(INVALID_HEADER_JSON, path, null,
                        "__metadata__ value of '" + e.getKey() + "' is not a string");
            }
            out.put(e.getKey(), e.getValue().textValue());
        }
    }

    private record Entry(String name, DType dtype, long[] shape, long begin, long end) {
    }

    private static Entry parseEntry(Path path, String name, JsonNode node) throws SafetensorsException {
        if (!node.isObject()) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, name, "entry is not an object");
        }
        JsonNode dtypeNode = node.get("dtype");
        if (dtypeNode == null || !dtypeNode.isTextual()) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, name, "entry has no string 'dtype'");
        }
        DType dtype = DType.parse(dtypeNode.textValue());
        if (dtype == null) {
            throw new SafetensorsException(UNKNOWN_DTYPE, path, name,
                    "unknown dtype '" + dtypeNode.textValue() + "'; the file was written by a newer tool or is corrupt");
        }
        long[] shape = readUnsignedArray(path, name, node.get("shape"), "shape", -1);
        long[] offsets = readUnsignedArray(path, name, node.get("data_offsets"), "data_offsets", 2);
        return new Entry(name, dtype, shape, offsets[0], offsets[1]);
    }

    private static long[] readUnsignedArray(Path path, String name, JsonNode node, String field, int expectedLength)
            throws SafetensorsException {
        if (node == null || !node.isArray()) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, name, "entry has no array '" + field + "'");
        }
        if (expectedLength >= 0 && node.size() != expectedLength) {
            throw new SafetensorsException(INVALID_HEADER_JSON, path, name,
                    "'" + field + "' has " + node.size() + " values, expected " + expectedLength);
        }
        long[] out = new long[node.size()];
        for (int i = 0; i < out.length; i++) {
            JsonNode v = node.get(i);
            if (!v.isIntegralNumber() || !v.canConvertToLong() || v.longValue() < 0) {
                throw new SafetensorsException(INVALID_HEADER_JSON, path, name,
                        "'" + field + "' holds " + v + ", not a non-negative 64-bit integer");
            }
            out[i] = v.longValue();
        }
        return out;
    }

    private static Map<String, TensorInfo> validate(Path path, List<Entry> entries, long dataStart, long fileSize)
            throws SafetensorsException {
        List<Entry> sorted = new ArrayList<>(entries);
        // safetensors: tensors are validated in offset order; ties broken by name
        sorted.sort(Comparator.comparingLong(Entry::begin).thenComparingLong(Entry::end).thenComparing(Entry::name));
        long expectedBegin = 0;
        Map<String, TensorInfo> tensors = new LinkedHashMap<>();
        for (Entry e : sorted) {
            if (e.begin != expectedBegin || e.end < e.begin) {
                throw new SafetensorsException(INVALID_OFFSET, path, e.name,
                        "data_offsets [" + e.begin + ", " + e.end + "] do not start where the previous tensor ends (" + expectedBegin
                                + "); tensors must tile the data section without holes or overlaps");
            }
            long numBits;
            try {
                numBits = Math.multiplyExact(TensorInfo.numElements(e.shape), (long) e.dtype.bits());
            } catch (ArithmeticException ex) {
                throw new SafetensorsException(VALIDATION_OVERFLOW, path, e.name,
                        "shape " + TensorInfo.shapeString(e.shape) + " overflows a 64-bit size");
            }
            if (numBits % 8 != 0) {
                throw new SafetensorsException(MISALIGNED_SLICE, path, e.name,
                        e.dtype + " tensor of shape " + TensorInfo.shapeString(e.shape) + " does not end on a byte boundary");
            }
            long size = numBits / 8;
            if (e.end - e.begin != size) {
                throw new SafetensorsException(TENSOR_INVALID_INFO, path, e.name,
                        "holds " + (e.end - e.begin) + " bytes but " + e.dtype + TensorInfo.shapeString(e.shape) + " needs " + size);
            }
            expectedBegin = e.end;
            tensors.put(e.name, new TensorInfo(e.name, e.dtype, e.shape, dataStart + e.begin, size));
        }
        long expectedSize;
        try {
            expectedSize = Math.addExact(dataStart, expectedBegin);
        } catch (ArithmeticException ex) {
            throw new SafetensorsException(VALIDATION_OVERFLOW, path, null, "data offsets overflow a 64-bit size");
        }
        if (expectedSize != fileSize) {
            throw new SafetensorsException(METADATA_INCOMPLETE_BUFFER, path, null,
                    "the tensors cover " + expectedSize + " bytes but the file has " + fileSize
                            + (fileSize < expectedSize ? "; the file is truncated: copy or download it again" : "; trailing bytes follow the last tensor"));
        }
        // keep the header's own order for listing
        Map<String, TensorInfo> inHeaderOrder = new LinkedHashMap<>();
        for (Entry e : entries) {
            inHeaderOrder.put(e.name, tensors.get(e.name));
        }
        return Collections.unmodifiableMap(inHeaderOrder);
    }

    private static void readFully(Path path, FileChannel channel, ByteBuffer dst, long position) throws SafetensorsException {
        try {
            long pos = position;
            while (dst.hasRemaining()) {
                int r = channel.read(dst, pos);
                if (r < 0) {
                    throw new SafetensorsException(INVALID_HEADER_LENGTH, path, null, "unexpected end of file at byte " + pos);
                }
                pos += r;
            }
        } catch (IOException e) {
            throw new SafetensorsException(IO, path, null, "read failed: " + e.getMessage(), e);
        }
    }

    public Path path() {
        return path;
    }

    public long headerSize() {
        return headerSize;
    }

    public Map<String, String> metadata() {
        return metadata;
    }

    /** Tensors in header order. */
    public Collection<TensorInfo> tensors() {
        return tensors.values();
    }

    public TensorInfo tensor(String name) {
        return tensors.get(name);
    }

    public boolean contains(String name) {
        return tensors.containsKey(name);
    }

    /**
     * Maps {@code length} bytes of {@code tensor} starting at {@code byteOffset} within it.
     * The window must be at most {@link MappedRegion#MAX_WINDOW} bytes.
     */
    public MappedRegion map(TensorInfo tensor, long byteOffset, long length) throws IOException {
        if (byteOffset < 0 || length < 0 || byteOffset + length > tensor.sizeInBytes()) {
            throw new IllegalArgumentException("window [" + byteOffset + ", +" + length + ") outside " + tensor);
        }
        return MappedRegion.map(channel, path, tensor.dataStart() + byteOffset, length);
    }

    /**
     * Reads {@code dst.remaining()} bytes of {@code tensor} starting at {@code byteOffset} within it
     * into {@code dst} by positional reads (no mapping, no page faults of ours), leaving {@code dst}
     * positioned at its limit.
     */
    public void readInto(TensorInfo tensor, long byteOffset, ByteBuffer dst) throws IOException {
        long length = dst.remaining();
        if (byteOffset < 0 || byteOffset + length > tensor.sizeInBytes()) {
            throw new IllegalArgumentException("window [" + byteOffset + ", +" + length + ") outside " + tensor);
        }
        long pos = tensor.dataStart() + byteOffset;
        while (dst.hasRemaining()) {
            int r = channel.read(dst, pos);
            if (r < 0) {
                throw new IOException(path + ": file shrank while reading " + tensor.name());
            }
            pos += r;
        }
    }

    /** Reads a whole (small) tensor onto the heap. */
    public ByteBuffer readAll(TensorInfo tensor) throws IOException {
        if (tensor.sizeInBytes() > MappedRegion.MAX_WINDOW) {
            throw new IllegalArgumentException(tensor + " is too large to read at once");
        }
        ByteBuffer dst = ByteBuffer.allocate((int) tensor.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        long pos = tensor.dataStart();
        while (dst.hasRemaining()) {
            int r = channel.read(dst, pos);
            if (r < 0) {
                throw new IOException(path + ": file shrank while reading " + tensor.name());
            }
            pos += r;
        }
        dst.flip();
        return dst;
    }

    /** The underlying channel, for zero-copy transfers of unchanged tensors. */
    public FileChannel channel() {
        return channel;
    }

    @Override
    public void close() throws IOException {
        channel.close();
    }
}
