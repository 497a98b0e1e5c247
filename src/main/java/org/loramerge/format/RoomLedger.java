package org.loramerge.format;

import java.io.IOException;
import java.nio.file.FileStore;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The room the models being written in this JVM still need, by file system, so that writes through
 * memory mappings ({@link WriteMode#MAPPED}, {@link WriteMode#MIXED}) never find a file system full.
 * A shard is sized up front but takes its room only as it is written, and a mapped write that finds
 * none is a bus error, which Java 17 delivers too late to report (the JVM ends with exit 1), where a
 * positional write fails with an error the merge reports. So a model written through mappings is
 * refused before anything is written unless its file system has room for it beside what the other
 * models being written there still need; and while one is written so, the models written there
 * positionally are held to the same rule, since they would take the room it counts on. File systems
 * that keep no count of their room (ramfs, or tmpfs mounted with size=0) have none to run out of and
 * are not checked. Other processes filling a file system meanwhile are beyond this check.
 */
public final class RoomLedger {
    private static final Map<FileStore, List<Claim>> CLAIMS = new HashMap<>();

    private RoomLedger() {
    }

    /**
     * Claims {@code bytes} of the file system holding {@code dir} for a model written {@code mapped}
     * (through mappings) or not; the claim shrinks as the writer reports bytes written
     * ({@link Claim#wrote}) and ends when closed.
     *
     * @param name what the message names (the model's folder)
     * @param what the files in words ("the merged model")
     * @throws IOException "No space left on device" when the check applies and the room is not there
     */
    public static Claim claim(Path dir, String name, String what, long bytes, boolean mapped) throws IOException {
        FileStore store;
        try {
            store = Files.getFileStore(dir);
            if (store.getTotalSpace() == 0) {
                return new Claim(null, bytes, mapped); // no count of room kept: nothing to run out of, nothing to check
            }
        } catch (IOException e) {
            if (mapped) {
                throw e;
            }
            return new Claim(null, bytes, false);
        }
        synchronized (CLAIMS) {
            List<Claim> on = CLAIMS.computeIfAbsent(store, s -> new ArrayList<>());
            boolean check = mapped;
            long others = 0;
            for (Claim c : on) {
                check |= c.mapped;
                others += c.outstanding();
            }
            if (check) {
                require(store, name, what, bytes, others);
            }
            Claim c = new Claim(store, bytes, mapped);
            on.add(c);
            return c;
        }
    }

    /**
     * Refuses {@code bytes} on the file system holding {@code dir} when it has less room free, unless
     * it keeps no count of its room (ramfs, tmpfs with size=0): the check of one file, beside the model's claim.
     */
    static void requireFree(Path dir, String name, String what, long bytes) throws IOException {
        FileStore store = Files.getFileStore(dir);
        if (store.getTotalSpace() > 0) {
            require(store, name, what, bytes, 0);
        }
    }

    /**
     * Refuses {@code bytes} more on {@code store} (which keeps a count of its room) when its free room,
     * less the {@code others} promised to other models, is smaller.
     */
    static void require(FileStore store, String name, String what, long bytes, long others) throws IOException {
        long usable = store.getUsableSpace();
        if (usable - others < bytes) {
            throw new IOException(name + ": No space left on device: " + what + " needs " + bytes + " bytes and its file system has "
                    + usable + " free" + (others > 0 ? ", " + others + " of them still to be written by other models this process writes" : "")
                    + "; free space, or write elsewhere");
        }
    }

    /** Bytes the models this process writes on the file system holding {@code dir} still need there. */
    public static long outstanding(Path dir) throws IOException {
        FileStore store = Files.getFileStore(dir);
        synchronized (CLAIMS) {
            return CLAIMS.getOrDefault(store, List.of()).stream().mapToLong(Claim::outstanding).sum();
        }
    }

    /** Room claimed for one model; {@link #close} ends it. */
    public static final class Claim implements AutoCloseable {
        private final FileStore store;
        private final long bytes;
        private final boolean mapped;
        private final AtomicLong written = new AtomicLong();

        private Claim(FileStore store, long bytes, boolean mapped) {
            this.store = store;
            this.bytes = bytes;
            this.mapped = mapped;
        }

        /** A claim of nothing, checked against nothing (a writer that makes no claim). */
        public static Claim none() {
            return new Claim(null, 0, false);
        }

        /** Counts {@code n} bytes the model has written: they need no more room. */
        public void wrote(long n) {
            written.addAndGet(n);
        }

        long outstanding() {
            return Math.max(0, bytes - written.get());
        }

        @Override
        public void close() {
            if (store == null) {
                return;
            }
            synchronized (CLAIMS) {
                List<Claim> on = CLAIMS.get(store);
                if (on != null) {
                    on.remove(this);
                    if (on.isEmpty()) {
                        CLAIMS.remove(store);
                    }
                }
            }
        }
    }
}
