package org.loramerge.format;

import com.sun.jna.Native;
import com.sun.jna.Platform;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;

/**
 * Starts the disk on bytes just written into a file, without waiting for them: Linux's
 * {@code sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)}, called through JNA, since Java
 * has no call of its own for it ({@link java.nio.channels.FileChannel#force} waits for every dirty
 * page of the file and then for the device's cache). A writer that starts the disk on each block as
 * it writes it keeps the disk busy from its first block on, in the order the blocks come, and leaves
 * the file's final fsync little to wait for; on the GPU machine 8 threads wrote 27 GB onto its disk
 * in 12.2-12.4 s this way, against 13.7-14.1 s written and then fsync'd (benchmarks/RESULTS.md,
 * "Writing onto a disk").
 *
 * <p>It only tells the kernel to begin: it changes no byte and promises no durability, so the writer
 * still forces the file at its end. Where it cannot work (not Linux on x86-64 or aarch64, JNA unable to
 * load its native part, a file system that refuses the call) {@link #open} gives null or
 * {@link #start} gives false, and the writer goes on as it would without it.
 */
public final class WriteBack implements AutoCloseable {
    private static final int O_RDONLY = 0;
    private static final int O_CLOEXEC = 0x80000; // 02000000, the same on x86-64 and aarch64
    private static final int SYNC_FILE_RANGE_WRITE = 2;

    private final int fd;
    /** Closed, or the file system refused the call once: nothing more is started. */
    private volatile boolean stopped;
    /** The descriptor given back (guarded by this). */
    private boolean closed;

    private WriteBack(int fd) {
        this.fd = fd;
    }

    /** Whether this JVM can start a disk on a range ({@link #open} may then still give null for a file). */
    public static boolean available() {
        return Libc.LOADED;
    }

    /**
     * Binds the call on a daemon thread now: JNA's loading takes 0.1-0.2 s, which then passes while a
     * command parses and plans instead of before its first file.
     */
    public static void prepareInBackground() {
        Thread t = new Thread(WriteBack::available, "loramerge-writeback-load");
        t.setDaemon(true);
        t.start();
    }

    /**
     * A handle to start the disk on ranges of {@code file} (which exists), through a descriptor of its
     * own, opened for reading: the range of the file's pages is the same whichever descriptor names
     * it. Null where {@link #available} is false or the file cannot be opened.
     */
    public static WriteBack open(Path file) {
        if (!Libc.LOADED) {
            return null;
        }
        // a Linux path is bytes; Java encodes a path's name with sun.jnu.encoding
        Charset names;
        try {
            names = Charset.forName(System.getProperty("sun.jnu.encoding", "UTF-8"));
        } catch (RuntimeException e) {
            names = StandardCharsets.UTF_8;
        }
        byte[] name = (file.toAbsolutePath().toString() + '\0').getBytes(names);
        int fd = Libc.open(name, O_RDONLY | O_CLOEXEC);
        return fd < 0 ? null : new WriteBack(fd);
    }

    /**
     * Starts the disk writing the file's dirty pages in {@code [offset, offset + length)} and returns
     * without waiting for them (it may wait while the device's queue is full). False when nothing was
     * started: closed, or the file system refused it, after which this handle starts nothing more.
     */
    public boolean start(long offset, long length) {
        if (stopped || length <= 0) {
            return false;
        }
        // a call racing close() may name a descriptor just reused by another file: it would only start that
        // file's disk early, which changes nothing in it
        if (Libc.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) != 0) {
            stopped = true;
            return false;
        }
        return true;
    }

    @Override
    public synchronized void close() {
        stopped = true;
        if (!closed) {
            closed = true;
            Libc.close(fd);
        }
    }

    /** libc's calls, bound by JNA's direct mapping; LOADED is false where they cannot be. */
    private static final class Libc {
        static final boolean LOADED = load();

        private static boolean load() {
            try {
                // the runnable jar carries JNA's native part for these two only
                if (!Platform.isLinux() || !Platform.is64Bit() || !(Platform.isIntel() || Platform.isARM())) {
                    return false;
                }
                Native.register(Libc.class, Platform.C_LIBRARY_NAME);
                return true;
            } catch (LinkageError | RuntimeException e) {
                // JNA missing from the class path, its native part not loadable (a temp folder mounted noexec), no such symbol
                return false;
            }
        }

        static native int open(byte[] path, int flags);

        static native int sync_file_range(int fd, long offset, long nbytes, int flags);

        static native int close(int fd);
    }
}
