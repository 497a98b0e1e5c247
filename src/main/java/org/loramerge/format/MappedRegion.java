package org.loramerge.format;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;

/**
 * A window of a file mapped into memory (read-only, or writable for {@link #mapForWriting}),
 * unmapped as soon as it is closed, so that a
 * long streaming merge keeps a bounded resident set (the JDK would otherwise unmap only when the
 * garbage collector gets to the buffer). Windows are at most 2 GiB - 1 bytes, a Java 17 limit;
 * larger tensors are read in several windows (Lucene's MMapDirectory does the same).
 */
public final class MappedRegion implements AutoCloseable {
    /** The largest window one mapping may have. */
    public static final long MAX_WINDOW = Integer.MAX_VALUE - 7;

    private MappedByteBuffer buffer;

    private MappedRegion(MappedByteBuffer buffer) {
        this.buffer = buffer;
    }

    /**
     * Maps {@code length} bytes at {@code position} of {@code channel}.
     *
     * @throws IOException with a message naming the file and the likely limits when the mapping fails
     */
    public static MappedRegion map(FileChannel channel, Path path, long position, long length) throws IOException {
        return map(channel, path, position, length, FileChannel.MapMode.READ_ONLY);
    }

    /**
     * Maps {@code length} bytes at {@code position} of {@code channel} (open for reading and writing,
     * and already that long) to be written with {@link #copyIn}.
     */
    public static MappedRegion mapForWriting(FileChannel channel, Path path, long position, long length) throws IOException {
        return map(channel, path, position, length, FileChannel.MapMode.READ_WRITE);
    }

    private static MappedRegion map(FileChannel channel, Path path, long position, long length, FileChannel.MapMode mode) throws IOException {
        if (length < 0 || length > MAX_WINDOW) {
            throw new IllegalArgumentException("window of " + length + " bytes; at most " + MAX_WINDOW);
        }
        try {
            MappedByteBuffer b = channel.map(mode, position, length);
            b.order(ByteOrder.LITTLE_ENDIAN);
            return new MappedRegion(b);
        } catch (IOException | OutOfMemoryError e) {
            throw new IOException("could not memory-map " + length + " bytes at offset " + position + " of " + path
                    + " (" + e.getMessage() + "); check `ulimit -v` and `sysctl vm.max_map_count`", e);
        }
    }

    /** The mapped bytes, little-endian, positioned at 0. Each call returns a fresh view. */
    public ByteBuffer bytes() {
        if (buffer == null) {
            throw new IllegalStateException("region already closed");
        }
        return buffer.duplicate().order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * Copies {@code src}'s remaining bytes to the start of a writable region. A write the file
     * system cannot back (a full disk, or tmpfs out of memory) is a bus error on the mapping, which
     * Java 17 turns into an {@link InternalError} thrown asynchronously, at the thread's next entry
     * into the VM: rarely in this copy (then an IOException here), usually after it, typically in
     * {@link #close}'s unmapping, where the JDK's Cleaner ends the JVM (exit 1). Callers must make
     * sure the room exists before mapping (SafetensorsWriter checks the file system's free space).
     */
    public void copyIn(ByteBuffer src) throws IOException {
        if (buffer == null) {
            throw new IllegalStateException("region already closed");
        }
        int n = src.remaining();
        try {
            buffer.duplicate().put(src);
        } catch (InternalError e) {
            throw new IOException("could not write " + n + " bytes through a memory mapping (" + e.getMessage()
                    + "): the output's file system is probably full (or an input file shrank while it was read); free space, or write elsewhere", e);
        }
    }

    public long length() {
        return buffer == null ? 0 : buffer.capacity();
    }

    @Override
    public void close() {
        if (buffer == null) {
            throw new IllegalStateException("region closed twice");
        }
        MappedByteBuffer b = buffer;
        buffer = null;
        DirectBuffers.free(b); // where it cannot, the mapping is released by the garbage collector
    }
}
