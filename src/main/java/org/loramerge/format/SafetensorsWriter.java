package org.loramerge.format;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Writes one safetensors file: the header first (its tensors, shapes and offsets are fixed up
 * front), then the tensors' bytes, either appended in header order ({@link #write}) or placed at
 * their offsets by any number of threads at once ({@link #writeAt}); the file is sized up front, so
 * such writes never extend it and need no lock. The header is padded with spaces to a multiple of
 * 8 bytes, as the reference writer does, so the data section starts aligned. {@link #finish}
 * checks that every declared byte was written.
 */
public final class SafetensorsWriter implements AutoCloseable {
    /** A tensor to be written: its name, dtype and shape. */
    public record Entry(String name, DType dtype, long[] shape) {
        public long sizeInBytes() {
            return TensorInfo.numElements(shape) * dtype.bits() / 8;
        }
    }

    private final Path path;
    private final FileChannel channel;
    private final long dataStart;
    private final long totalSize;
    private final Map<String, Long> offsets;
    private final AtomicLong written = new AtomicLong();
    private long position;
    private boolean closed;

    private SafetensorsWriter(Path path, FileChannel channel, long dataStart, long totalSize, Map<String, Long> offsets) {
        this.path = path;
        this.channel = channel;
        this.dataStart = dataStart;
        this.totalSize = dataStart + totalSize;
        this.position = dataStart;
        this.offsets = offsets;
    }

    /** The header bytes (length prefix included) for these entries, in this order. */
    public static byte[] header(List<Entry> entries, Map<String, String> metadata) {
        ObjectNode root = SafetensorsFile.JSON.createObjectNode();
        if (!metadata.isEmpty()) {
            ObjectNode m = root.putObject("__metadata__");
            metadata.forEach(m::put);
        }
        long offset = 0;
        for (Entry e : entries) {
            ObjectNode t = root.putObject(e.name());
            t.put("dtype", e.dtype().name());
            ArrayNode shape = t.putArray("shape");
            for (long d : e.shape()) {
                shape.add(d);
            }
            long size = e.sizeInBytes();
            ArrayNode offsets = t.putArray("data_offsets");
            offsets.add(offset);
            offsets.add(offset + size);
            offset += size;
        }
        byte[] json = root.toString().getBytes(StandardCharsets.UTF_8);
        int padded = (json.length + 7) / 8 * 8;
        byte[] out = new byte[8 + padded];
        ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN).putLong(padded);
        System.arraycopy(json, 0, out, 8, json.length);
        Arrays.fill(out, 8 + json.length, out.length, (byte) ' ');
        return out;
    }

    /** Creates {@code path} (which must not exist) and writes the header. */
    public static SafetensorsWriter create(Path path, List<Entry> entries, Map<String, String> metadata) throws IOException {
        byte[] header = header(entries, metadata);
        long total = 0;
        Map<String, Long> offsets = new HashMap<>();
        for (Entry e : entries) {
            offsets.put(e.name(), total);
            total += e.sizeInBytes();
        }
        FileChannel ch = FileChannel.open(path, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        try {
            ByteBuffer hb = ByteBuffer.wrap(header);
            long pos = 0;
            while (hb.hasRemaining()) {
                pos += ch.write(hb, pos);
            }
            if (total > 0) {
                ch.write(ByteBuffer.wrap(new byte[1]), header.length + total - 1); // the file's final size, so positional writes never grow it
            }
        } catch (IOException e) {
            ch.close();
            throw e;
        }
        return new SafetensorsWriter(path, ch, header.length, total, offsets);
    }

    /** Where tensor {@code name}'s bytes start, relative to the data section. */
    public long offsetOf(String name) {
        Long o = offsets.get(name);
        if (o == null) {
            throw new IllegalArgumentException(path + " declares no tensor " + name);
        }
        return o;
    }

    /** Appends bytes of the tensor being written (one thread). */
    public void write(ByteBuffer src) throws IOException {
        long n = src.remaining();
        writeAt(position - dataStart, src);
        position += n;
    }

    /**
     * Writes {@code src}'s remaining bytes at {@code offset} of the data section. Safe to call from
     * several threads at once for disjoint ranges.
     */
    public void writeAt(long offset, ByteBuffer src) throws IOException {
        long n = src.remaining();
        long at = dataStart + offset;
        if (offset < 0 || at + n > totalSize) {
            throw new IllegalStateException(path + ": writing past the declared tensors");
        }
        long done = 0;
        while (done < n) {
            done += channel.write(src, at + done);
        }
        written.addAndGet(n);
    }

    /** Appends {@code length} bytes of another file, without copying them through the heap. */
    public void transferFrom(FileChannel source, long sourcePosition, long length) throws IOException {
        if (position + length > totalSize) {
            throw new IllegalStateException(path + ": writing past the declared tensors");
        }
        long done = 0;
        while (done < length) {
            long n = source.transferTo(sourcePosition + done, length - done, channel.position(position + done));
            if (n <= 0) {
                throw new IOException(path + ": source ended while copying");
            }
            done += n;
        }
        position += length;
        written.addAndGet(length);
    }

    public long position() {
        return position;
    }

    public long dataStart() {
        return dataStart;
    }

    public Path path() {
        return path;
    }

    /**
     * Starts writing what is written so far to the disk and waits for it (fdatasync). Safe to call
     * from another thread while this one appends; the merge uses it to overlap the disk with the work.
     */
    public void force() throws IOException {
        channel.force(false);
    }

    /** Checks that every declared byte was written and forces the file to disk. */
    public void finish() throws IOException {
        long missing = totalSize - dataStart - written.get();
        if (missing != 0) {
            throw new IllegalStateException(path + ": " + missing + " bytes of tensor data were not written");
        }
        channel.force(true);
    }

    @Override
    public void close() throws IOException {
        if (!closed) {
            closed = true;
            channel.close();
        }
    }
}
