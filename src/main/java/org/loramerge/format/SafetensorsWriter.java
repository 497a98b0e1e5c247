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
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Writes one safetensors file: the header first (its tensors, shapes and offsets are fixed up
 * front), then the tensors' bytes, either appended in header order ({@link #write}) or placed at
 * their offsets by any number of threads at once ({@link #writeAt}); the file is sized up front, so
 * such writes never extend it. Positional writes into one file still take turns in the kernel
 * (Linux holds the file's inode lock for each buffered write, on tmpfs as on ext4 and XFS); a
 * writer made with another {@link WriteMode} copies each block, or each block that would wait for
 * its turn, into a memory mapping of its place, which threads fill at once. The header is padded with spaces to a multiple of
 * 8 bytes, as the reference writer does, so the data section starts aligned. {@link #finish}
 * checks that every declared byte was written.
 *
 * <p>A tensor whose length is known only after the others are written (a quant state holding a
 * mean of the whole weight, see {@link Entry#late}) is declared late: 1-D, at most a maximum
 * length. Late tensors are placed after every other tensor of the data section, in their declared
 * order, and their bytes, given at any time and from any thread ({@link #writeLate}), are appended
 * by {@link #finish} (the file is sized up front to the fixed tensors only);
 * the header is written last. Its length is reserved up front for the longest it can be (every
 * late tensor at its maximum), so every other tensor's offset is fixed from the start, and the
 * final header is padded with trailing spaces to that length (JSON whitespace, which safetensors
 * readers accept, FORMATS.md §6). A file without late tensors has its header written first, as
 * before.
 */
public final class SafetensorsWriter implements AutoCloseable {
    /**
     * A tensor to be written: its name, dtype and shape.
     *
     * @param late whether its length is known only when its bytes are; {@code shape} is then
     *             {@code [maximum elements]} (see {@link #late})
     */
    public record Entry(String name, DType dtype, long[] shape, boolean late) {
        public Entry(String name, DType dtype, long[] shape) {
            this(name, dtype, shape, false);
        }

        /** A 1-D tensor of at most {@code maxElements} elements whose length is known only when it is written. */
        public static Entry late(String name, DType dtype, long maxElements) {
            return new Entry(name, dtype, new long[] {maxElements}, true);
        }

        /** Bytes of the tensor, or for a late one its largest. */
        public long sizeInBytes() {
            return TensorInfo.numElements(shape) * dtype.bits() / 8;
        }
    }

    private final Path path;
    private final FileChannel channel;
    private final List<Entry> entries;
    private final Map<String, String> metadata;
    private final long dataStart;
    private final long fixedEnd;
    /** Where each fixed tensor's bytes start, relative to the data section. */
    private final Map<String, Long> offsets;
    /** Bytes of fixed tensors written so far, by any thread. */
    private final AtomicLong written = new AtomicLong();
    /** Blocks put in place through a mapping so far. */
    private final AtomicLong blocksMapped = new AtomicLong();
    /** Held for each positional write ({@link #writeAt}). */
    private final ReentrantLock positionalWrites = new ReentrantLock();
    /** How {@link #writeAt} puts a block in place: positional, mapped, or mixed (never {@link WriteMode#AUTO}). */
    private final WriteMode writes;
    /** The given bytes of each late tensor, by name, in declared order (null until given). */
    private final Map<String, ByteBuffer> late = new LinkedHashMap<>();
    private long position;
    /** Closed, by whichever thread (the writing one, or the one that finished the file in the background). */
    private volatile boolean closed;

    private SafetensorsWriter(Path path, FileChannel channel, List<Entry> entries, Map<String, String> metadata, long dataStart,
                              long fixedSize, Map<String, Long> offsets, WriteMode writes) {
        this.path = path;
        this.writes = writes;
        this.channel = channel;
        this.entries = List.copyOf(entries);
        this.metadata = metadata;
        this.dataStart = dataStart;
        this.fixedEnd = dataStart + fixedSize;
        this.position = dataStart;
        this.offsets = offsets;
        for (Entry e : entries) {
            if (e.late()) {
                late.put(e.name(), null);
            }
        }
    }

    /** The header bytes (length prefix included) for these entries, in this order; late entries at their largest. */
    public static byte[] header(List<Entry> entries, Map<String, String> metadata) {
        return header(entries, metadata, null, 0);
    }

    /**
     * The header for {@code entries}: fixed tensors from offset 0 in order, late ones after them,
     * each of its length in {@code lateBytes} (null: its largest); padded with spaces to a
     * multiple of 8, and at least to {@code minLength} (which is one).
     */
    private static byte[] header(List<Entry> entries, Map<String, String> metadata, Map<String, ByteBuffer> lateBytes, int minLength) {
        ObjectNode root = SafetensorsFile.JSON.createObjectNode();
        if (!metadata.isEmpty()) {
            ObjectNode m = root.putObject("__metadata__");
            metadata.forEach(m::put);
        }
        long lateOffset = 0;
        for (Entry e : entries) {
            lateOffset += e.late() ? 0 : e.sizeInBytes();
        }
        long offset = 0;
        for (Entry e : entries) {
            ObjectNode t = root.putObject(e.name());
            t.put("dtype", e.dtype().name());
            ArrayNode shape = t.putArray("shape");
            long size = e.sizeInBytes();
            long begin;
            if (e.late()) {
                if (lateBytes != null) {
                    size = lateBytes.get(e.name()).remaining();
                }
                shape.add(size / (e.dtype().bits() / 8));
                begin = lateOffset;
                lateOffset += size;
            } else {
                for (long d : e.shape()) {
                    shape.add(d);
                }
                begin = offset;
                offset += size;
            }
            ArrayNode offsets = t.putArray("data_offsets");
            offsets.add(begin);
            offsets.add(begin + size);
        }
        byte[] json = root.toString().getBytes(StandardCharsets.UTF_8);
        int padded = Math.max((json.length + 7) / 8 * 8, minLength);
        byte[] out = new byte[8 + padded];
        ByteBuffer.wrap(out).order(ByteOrder.LITTLE_ENDIAN).putLong(padded);
        System.arraycopy(json, 0, out, 8, json.length);
        Arrays.fill(out, 8 + json.length, out.length, (byte) ' ');
        return out;
    }

    /**
     * Creates {@code path} (which must not exist) for these tensors. Without late entries the
     * header is written now; with them its room is reserved and it is written by {@link #finish}.
     */
    public static SafetensorsWriter create(Path path, List<Entry> entries, Map<String, String> metadata) throws IOException {
        return create(path, entries, metadata, WriteMode.POSITIONAL);
    }

    /**
     * {@link #create(Path, List, Map)}, whose {@link #writeAt} puts blocks in place as {@code writes}
     * says ({@link WriteMode#AUTO} resolved for the file's folder): by positional writes, or by copies
     * into a memory mapping of the block's range (then unmapped at once, so the resident set stays a
     * block a thread), for every block or for those whose file another thread is writing: the kernel
     * takes one positional write into a file at a time, and faults on different pages of a mapping at once.
     */
    public static SafetensorsWriter create(Path path, List<Entry> entries, Map<String, String> metadata, WriteMode writes)
            throws IOException {
        WriteMode mode = writes.resolve(path.toAbsolutePath().getParent());
        byte[] header = header(entries, metadata);
        boolean anyLate = false;
        long fixed = 0;
        Map<String, Long> offsets = new HashMap<>();
        for (Entry e : entries) {
            if (e.late() && (e.shape().length != 1 || e.dtype().bits() % 8 != 0)) {
                throw new IllegalArgumentException(e.name() + ": a late tensor is 1-D, of a whole-byte dtype");
            }
            anyLate |= e.late();
            if (!e.late()) {
                offsets.put(e.name(), fixed);
                fixed += e.sizeInBytes();
            }
        }
        if (mode.maps() && fixed > 0) {
            requireSpaceForMappedWrites(path, header.length + fixed);
        }
        // a read-write mapping needs a channel open for reading too
        FileChannel ch = mode.maps() ? FileChannel.open(path, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ, StandardOpenOption.WRITE)
                : FileChannel.open(path, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE);
        try {
            if (!anyLate) {
                writeFully(ch, ByteBuffer.wrap(header), 0);
            }
            if (fixed > 0) {
                // the fixed tensors' final extent, so positional writes never grow the file
                ch.write(ByteBuffer.wrap(new byte[1]), header.length + fixed - 1);
            }
        } catch (IOException e) {
            ch.close();
            throw e;
        }
        return new SafetensorsWriter(path, ch, entries, Map.copyOf(metadata), header.length, fixed, offsets, mode);
    }

    /**
     * Refuses mapped writes of a file of {@code bytes} when its file system has less room: a write
     * through a mapping that the file system cannot back is a bus error, which Java 17 raises not in
     * the copy but asynchronously, later (in practice in the JDK's unmapping, whose Cleaner then ends
     * the JVM with exit 1), so a full disk cannot be reported as it happens, only foreseen here (and
     * for a whole model before its first file, {@link RoomLedger}). Other programs may still fill it
     * meanwhile; positional writes report that. A file system that keeps no count of its room (ramfs,
     * or tmpfs mounted with size=0) is not checked.
     */
    private static void requireSpaceForMappedWrites(Path path, long bytes) throws IOException {
        RoomLedger.requireFree(path.toAbsolutePath().getParent(), path.toString(), "the file", bytes);
    }

    private static void writeFully(FileChannel ch, ByteBuffer b, long at) throws IOException {
        long pos = at;
        while (b.hasRemaining()) {
            pos += ch.write(b, pos);
        }
    }

    /** Where (not late) tensor {@code name}'s bytes start, relative to the data section. */
    public long offsetOf(String name) {
        Long o = offsets.get(name);
        if (o == null) {
            throw new IllegalArgumentException(path + " declares no tensor " + name + " at a fixed offset");
        }
        return o;
    }

    /** Appends bytes of the (not late) tensor being written (one thread). */
    public void write(ByteBuffer src) throws IOException {
        long n = src.remaining();
        writeAt(position - dataStart, src);
        position += n;
    }

    /**
     * Writes {@code src}'s remaining bytes at {@code offset} of the data section, within the fixed
     * (not late) tensors. Safe to call from several threads at once for disjoint ranges.
     */
    public void writeAt(long offset, ByteBuffer src) throws IOException {
        long n = src.remaining();
        long at = dataStart + offset;
        if (offset < 0 || at + n > fixedEnd) {
            throw new IllegalStateException(path + ": writing past the declared tensors");
        }
        if (n > 0) {
            // one positional write into the file at a time: the kernel takes them one at a time anyway (the file's
            // lock, on tmpfs, ext4 and xfs alike); threads queued here leave the one writing at full speed, where
            // threads contending for the kernel's lock slow each other (benchmarks/RESULTS.md, "From memory").
            // Mixed: the file's one positional writer when it is free; else, instead of queueing, through a mapping
            boolean positional = switch (writes) {
                case MAPPED -> false;
                case MIXED -> positionalWrites.tryLock();
                default -> {
                    positionalWrites.lock();
                    yield true;
                }
            };
            if (positional) {
                try {
                    positionalWrite(at, src);
                } finally {
                    positionalWrites.unlock();
                }
            } else {
                mappedWrite(at, src);
            }
        }
        written.addAndGet(n);
    }

    /** How this writer puts blocks in place ({@link WriteMode#AUTO} resolved). */
    public WriteMode writeMode() {
        return writes;
    }

    private void positionalWrite(long at, ByteBuffer src) throws IOException {
        long n = src.remaining();
        long done = 0;
        while (done < n) {
            done += channel.write(src, at + done);
        }
    }

    /** Blocks {@link #writeAt} put in place through a mapping. */
    public long blocksMapped() {
        return blocksMapped.get();
    }

    /** The lock a positional write holds: a test holds it to see a mixed writer's other path. */
    ReentrantLock positionalTurn() {
        return positionalWrites;
    }

    private void mappedWrite(long at, ByteBuffer src) throws IOException {
        blocksMapped.incrementAndGet();
        try (MappedRegion region = MappedRegion.mapForWriting(channel, path, at, src.remaining())) {
            region.copyIn(src);
        }
    }

    /**
     * The bytes of late tensor {@code name} (its remaining bytes, copied): at most its declared
     * maximum, a whole number of elements. May come before or after the other tensors' bytes.
     */
    public synchronized void writeLate(String name, ByteBuffer bytes) {
        if (!late.containsKey(name)) {
            throw new IllegalArgumentException(path + ": " + name + " is not a late tensor of this file");
        }
        if (late.get(name) != null) {
            throw new IllegalStateException(path + ": " + name + " written twice");
        }
        Entry e = entries.stream().filter(x -> x.name().equals(name)).findFirst().orElseThrow();
        int n = bytes.remaining();
        if (n > e.sizeInBytes() || n % (e.dtype().bits() / 8) != 0) {
            throw new IllegalArgumentException(path + ": " + n + " bytes for " + name + ", declared as at most " + e.sizeInBytes()
                    + " bytes of " + e.dtype());
        }
        ByteBuffer copy = ByteBuffer.allocate(n);
        copy.put(bytes.duplicate()).flip();
        late.put(name, copy);
    }

    /** Appends {@code length} bytes of another file, without copying them through the heap. */
    public void transferFrom(FileChannel source, long sourcePosition, long length) throws IOException {
        if (position + length > fixedEnd) {
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

    /**
     * Checks that every declared byte was written, appends the late tensors and writes the header
     * when there are any, and forces the file to disk. Returns the bytes of tensor data in the file.
     */
    public synchronized long finish() throws IOException {
        long missing = fixedEnd - dataStart - written.get();
        if (missing != 0) {
            throw new IllegalStateException(path + ": " + missing + " bytes of tensor data were not written");
        }
        position = fixedEnd;
        if (!late.isEmpty()) {
            for (Map.Entry<String, ByteBuffer> e : late.entrySet()) {
                if (e.getValue() == null) {
                    throw new IllegalStateException(path + ": late tensor " + e.getKey() + " was not written");
                }
                ByteBuffer b = e.getValue().duplicate();
                long n = b.remaining();
                writeFully(channel, b, position);
                position += n;
            }
            writeFully(channel, ByteBuffer.wrap(header(entries, metadata, late, (int) (dataStart - 8))), 0);
        }
        channel.force(true);
        return position - dataStart;
    }

    @Override
    public void close() throws IOException {
        if (!closed) {
            closed = true;
            channel.close();
        }
    }
}
