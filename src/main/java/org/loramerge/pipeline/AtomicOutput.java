package org.loramerge.pipeline;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;
import java.util.stream.Stream;
import org.loramerge.errors.OutputException;

/**
 * An output folder that appears complete or not at all. Everything is written into a hidden
 * temporary folder beside the target, {@code .NAME.loramerge-partial-ID}. {@link #commit()}
 * fsyncs every file and folder in it, moves an existing target aside to
 * {@code .NAME.loramerge-old-ID} (with {@code --overwrite}), renames the new folder into place,
 * fsyncs the parent folder and only then deletes the old output. If the rename fails, the old
 * output is moved back. Closing without committing (an error, or Ctrl-C through the shutdown
 * hook) deletes the temporary folder and puts a moved-aside old output back.
 *
 * <p>A process killed with SIGKILL (or a power cut) runs none of that. Its folders stay behind,
 * so each output also has an owner record, {@code .NAME.loramerge-lock-ID}, locked by the
 * owning process for its whole life: the operating system drops the lock when the process
 * dies, whatever the cause, and a lock cannot be mistaken for a new process that reuses the
 * PID. {@link #create} looks for such records beside the target whose lock it can take, and
 * cleans up after them: it deletes the dead owner's partial folder and either restores its
 * moved-aside old output (killed between the two renames of a commit, when the target is
 * missing) or deletes it (killed after the new output was in place). A live owner's folders are
 * never touched. POSIX cannot swap two non-empty folders atomically, so between those two
 * renames a killed process leaves the target missing until the next run restores it.
 *
 * <p>Hidden names stay within {@value #MAX_NAME_BYTES} bytes: a long NAME is shortened in them,
 * and the random ID keeps them unique.
 */
public final class AtomicOutput implements AutoCloseable {
    static final String PARTIAL_MARKER = ".loramerge-partial-";
    static final String OLD_MARKER = ".loramerge-old-";
    static final String LOCK_MARKER = ".loramerge-lock-";
    /** The longest file name, in bytes, of Linux file systems (NAME_MAX) and of most others. */
    static final int MAX_NAME_BYTES = 255;
    static final int ID_LENGTH = 8;
    /**
     * An owner record is created empty, then locked, then written. An empty one younger than this
     * may belong to a process between the first two steps, so it is left alone.
     */
    static final Duration UNWRITTEN_RECORD_GRACE = Duration.ofMinutes(1);

    private static final ObjectMapper JSON = new ObjectMapper();
    /**
     * The owner records of this process (file keys). A cleaner must not even open them: closing
     * any descriptor of a file drops all of the process's POSIX locks on it.
     */
    private static final Set<Object> OWN_RECORDS = ConcurrentHashMap.newKeySet();

    /**
     * The file-system steps of the commit protocol. Tests substitute an implementation that
     * records the calls and fails, or halts the process, between any two of them.
     */
    interface FileOps {
        /** Makes a file's data and metadata durable (fsync). */
        void forceFile(Path file) throws IOException;

        /** Makes a folder's entries durable (fsync of the folder). */
        void forceDir(Path dir) throws IOException;

        /** Renames atomically: afterwards {@code to} is there and {@code from} is not, or nothing changed. */
        void move(Path from, Path to) throws IOException;

        /** Deletes a folder and everything in it, as far as it can. */
        void deleteTree(Path dir);
    }

    /** Opens a file or folder for reading, to fsync it through the channel. */
    interface ChannelOpener {
        FileChannel open(Path path) throws IOException;
    }

    /** The real file system. */
    static final FileOps SYSTEM = system(path -> FileChannel.open(path, StandardOpenOption.READ));

    /** The real file system's steps, fsyncing through the channels {@code opener} opens (tests watch them). */
    static FileOps system(ChannelOpener opener) {
        return new FileOps() {
            @Override
            public void forceFile(Path file) throws IOException {
                try (FileChannel ch = opener.open(file)) {
                    ch.force(true);
                }
            }

            @Override
            public void forceDir(Path dir) {
                try (FileChannel ch = opener.open(dir)) {
                    ch.force(true);
                } catch (IOException e) {
                    // some file systems refuse to sync a folder; the files themselves are synced
                }
            }

            @Override
            public void move(Path from, Path to) throws IOException {
                Files.move(from, to, StandardCopyOption.ATOMIC_MOVE);
            }

            @Override
            public void deleteTree(Path dir) {
                deleteQuietly(dir);
            }
        };
    }

    private final Path target;
    private final Path temp;
    private final Path old;
    private final Path lockFile;
    private final Object lockKey;
    private final FileChannel lockChannel;
    private final ObjectNode record;
    private final boolean overwrite;
    private final FileOps ops;
    private final Consumer<String> log;
    /** The outermost parent folder this output created (null when its folder existed), removed again unless committed. */
    private final Path createdParent;
    private final Thread cleanup;
    private volatile boolean committed;
    private boolean movedAside;
    private boolean closed;

    private AtomicOutput(Path target, Path temp, Path old, Path lockFile, Object lockKey, FileChannel lockChannel, ObjectNode record,
                         boolean overwrite, FileOps ops, Consumer<String> log, Path createdParent) {
        this.target = target;
        this.temp = temp;
        this.old = old;
        this.lockFile = lockFile;
        this.lockKey = lockKey;
        this.lockChannel = lockChannel;
        this.record = record;
        this.overwrite = overwrite;
        this.ops = ops;
        this.log = log;
        this.createdParent = createdParent;
        this.cleanup = new Thread(this::abandon, "loramerge-cleanup");
    }

    /**
     * Prepares an output at {@code target}, refusing a target that exists (unless overwriting) and
     * any target that is, contains or lies inside one of {@code protectedDirs} (the inputs; one that
     * does not exist cannot overlap and is left to the reader to report). A missing parent folder is
     * created, as PEFT's and mergekit's {@code save_pretrained} do, and removed again if the output
     * is not committed. Commands call this before any planning, so a bad {@code --out} stops them first.
     * What it cleans up after dead processes is said on stderr.
     *
     * @throws OutputException the target exists (without {@code overwrite}), overlaps an input, or cannot be created
     */
    public static AtomicOutput create(Path target, boolean overwrite, List<Path> protectedDirs) throws OutputException {
        return create(target, overwrite, protectedDirs, AtomicOutput::toStderr);
    }

    /** As {@link #create(Path, boolean, List)}, saying what it cleans up after dead processes to {@code log}. */
    public static AtomicOutput create(Path target, boolean overwrite, List<Path> protectedDirs, Consumer<String> log) throws OutputException {
        return create(target, overwrite, protectedDirs, log, SYSTEM);
    }

    static AtomicOutput create(Path target, boolean overwrite, List<Path> protectedDirs, Consumer<String> log, FileOps ops)
            throws OutputException {
        Path abs = target.toAbsolutePath().normalize();
        Path parent = abs.getParent();
        if (parent == null) {
            throw new OutputException(abs, "--out " + target + " has no parent folder; name a folder to create", null);
        }
        String name = abs.getFileName().toString();
        try {
            // the overlap is judged on the real path of the deepest folder that exists, before anything is created
            Path existing = parent;
            while (!Files.exists(existing)) {
                existing = existing.getParent();
            }
            Path realTarget = existing.toRealPath().resolve(existing.relativize(abs));
            for (Path p : protectedDirs) {
                if (!Files.exists(p)) {
                    continue;
                }
                Path real = p.toRealPath();
                if (realTarget.startsWith(real) || real.startsWith(realTarget)) {
                    throw new OutputException(abs, "--out " + target + " overlaps the input " + p
                            + "; loramerge never writes into or over its inputs, choose another folder", null);
                }
            }
        } catch (IOException e) {
            throw new OutputException(abs, "cannot resolve --out " + target + " (" + e + "); check the folder's permissions", e);
        }
        if (Files.isDirectory(parent)) {
            removeStale(parent, name, log, ops);
        }
        if (Files.exists(abs, LinkOption.NOFOLLOW_LINKS)) {
            if (!overwrite) {
                throw new OutputException(abs, abs + ": --out exists; pass --overwrite to replace it (it is replaced only once the new model is complete)",
                        null);
            }
            if (!Files.isDirectory(abs, LinkOption.NOFOLLOW_LINKS)) {
                throw new OutputException(abs, "--out " + abs + " exists and is not a folder; refusing to replace it, choose another folder", null);
            }
        }
        Path createdParent = null;
        try {
            if (!Files.isDirectory(parent)) {
                Path first = parent;
                while (first.getParent() != null && !Files.exists(first.getParent(), LinkOption.NOFOLLOW_LINKS)) {
                    first = first.getParent();
                }
                Files.createDirectories(parent);
                createdParent = first;
            }
            return lockAndCreate(abs, parent, name, overwrite, ops, log, createdParent);
        } catch (IOException e) {
            if (createdParent != null) {
                removeEmptyFolders(parent, createdParent);
            }
            throw new OutputException(abs, "cannot create --out " + target + " (" + e + "); check the folder's permissions and free space", e);
        } catch (RuntimeException e) {
            if (createdParent != null) {
                removeEmptyFolders(parent, createdParent);
            }
            throw e;
        }
    }

    /** Creates the owner record (locked) and the partial folder of a new output in {@code parent}. */
    private static AtomicOutput lockAndCreate(Path abs, Path parent, String name, boolean overwrite, FileOps ops, Consumer<String> log,
                                              Path createdParent) throws IOException {
        String id = UUID.randomUUID().toString().substring(0, ID_LENGTH);
        String hidden = "." + visiblePart(name);
        Path lockFile = parent.resolve(hidden + LOCK_MARKER + id);
        FileChannel ch = FileChannel.open(lockFile, StandardOpenOption.CREATE_NEW, StandardOpenOption.READ, StandardOpenOption.WRITE);
        ObjectNode record = JSON.createObjectNode();
        Object key = fileKey(lockFile);
        OWN_RECORDS.add(key);
        try {
            lockOwn(ch, lockFile);
            ProcessHandle self = ProcessHandle.current();
            record.put("pid", self.pid());
            self.info().startInstant().ifPresent(t -> record.put("started", t.toString()));
            record.put("target", name);
            record.put("newOutputInPlace", false);
            writeRecord(ch, record);
            Path temp = parent.resolve(hidden + PARTIAL_MARKER + id);
            Files.createDirectory(temp);
            AtomicOutput out = new AtomicOutput(abs, temp, parent.resolve(hidden + OLD_MARKER + id), lockFile, key, ch, record, overwrite,
                    ops, log, createdParent);
            Runtime.getRuntime().addShutdownHook(out.cleanup);
            return out;
        } catch (IOException | RuntimeException e) {
            Files.deleteIfExists(lockFile);
            ch.close();
            OWN_RECORDS.remove(key);
            throw e;
        }
    }

    /** The temporary folder to write into. */
    public Path dir() {
        return temp;
    }

    public Path target() {
        return target;
    }

    /** Makes the output durable and visible under its final name. */
    public synchronized void commit() throws IOException {
        if (closed) {
            throw new IllegalStateException("commit after close");
        }
        // 1. every file, then every folder (deepest first, the temporary folder last), durable before any rename
        List<Path> files = new ArrayList<>();
        List<Path> dirs = new ArrayList<>();
        try (Stream<Path> walk = Files.walk(temp)) {
            for (Path p : (Iterable<Path>) walk.sorted()::iterator) {
                if (Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS)) {
                    dirs.add(p);
                } else if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) {
                    files.add(p);
                }
            }
        }
        for (Path f : files) {
            ops.forceFile(f);
        }
        dirs.sort(Comparator.comparingInt(Path::getNameCount).reversed());
        for (Path d : dirs) {
            ops.forceDir(d);
        }
        // 2. an existing output goes aside; it is deleted only once the new one is in place
        if (Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
            if (!overwrite) {
                throw new FileAlreadyExistsException(target.toString(), null, "appeared while merging; nothing was replaced");
            }
            ops.move(target, old);
            movedAside = true;
        }
        // 3. the new output into place; on failure the old one goes back
        try {
            ops.move(temp, target);
        } catch (IOException | RuntimeException e) {
            if (movedAside) {
                try {
                    ops.move(old, target);
                    movedAside = false;
                } catch (IOException | RuntimeException back) {
                    e.addSuppressed(back);
                }
            }
            throw e;
        }
        committed = true;
        record.put("newOutputInPlace", true);
        try {
            writeRecord(lockChannel, record); // tells a later run that a leftover old output may go
        } catch (IOException e) {
            // only the record of a cleanup to come; without it a leftover old output is left alone
        }
        // 4. the renames durable, then the old output deleted
        ops.forceDir(target.getParent());
        if (movedAside) {
            ops.deleteTree(old);
            movedAside = Files.exists(old, LinkOption.NOFOLLOW_LINKS); // close() retries
        }
    }

    @Override
    public void close() {
        try {
            abandon();
        } finally {
            try {
                Runtime.getRuntime().removeShutdownHook(cleanup);
            } catch (IllegalStateException shuttingDown) {
                // the hook is running or has run
            }
        }
    }

    /**
     * Undoes an unfinished output (or finishes the removal of a replaced one) and releases the owner
     * record; an uncommitted output also removes the parent folders it created.
     */
    private synchronized void abandon() {
        if (closed) {
            return;
        }
        closed = true;
        if (!committed) {
            if (movedAside && !Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
                try {
                    ops.move(old, target);
                    movedAside = false;
                } catch (IOException | RuntimeException e) {
                    log.accept("loramerge: could not move the previous output back from " + old + " to " + target + " (" + e
                            + "); the next merge into this folder will retry");
                }
            }
            ops.deleteTree(temp);
        } else if (movedAside) {
            ops.deleteTree(old);
        }
        boolean leftovers = Files.exists(temp, LinkOption.NOFOLLOW_LINKS) || Files.exists(old, LinkOption.NOFOLLOW_LINKS);
        try {
            if (!leftovers) {
                Files.deleteIfExists(lockFile); // kept otherwise, so that a later run finishes the cleanup
            }
        } catch (IOException e) {
            // an owner record without folders is harmless: the next run removes it
        } finally {
            try {
                lockChannel.close();
            } catch (IOException e) {
                // closing releases the lock either way
            }
            OWN_RECORDS.remove(lockKey);
        }
        if (!committed && !leftovers && createdParent != null) {
            removeEmptyFolders(target.getParent(), createdParent);
        }
    }

    /**
     * Cleans up after processes that died while writing an output into {@code parent}: for every
     * owner record whose lock can be taken, its partial folder is deleted and its moved-aside old
     * output restored or deleted, each said on {@code log}. Leftovers without an owner record that
     * belong to {@code name} are only reported.
     */
    static void removeStale(Path parent, String name, Consumer<String> log, FileOps ops) {
        List<String> owned = new ArrayList<>();
        try (DirectoryStream<Path> records = Files.newDirectoryStream(parent, ".*" + LOCK_MARKER + "*")) {
            for (Path lockFile : records) {
                String lockName = lockFile.getFileName().toString();
                int marker = lockName.lastIndexOf(LOCK_MARKER);
                String hidden = lockName.substring(0, marker);
                String id = lockName.substring(marker + LOCK_MARKER.length());
                owned.add(hidden + PARTIAL_MARKER + id);
                owned.add(hidden + OLD_MARKER + id);
                if (Files.isRegularFile(lockFile, LinkOption.NOFOLLOW_LINKS)) {
                    cleanUpAfter(lockFile, parent.resolve(hidden + PARTIAL_MARKER + id), parent.resolve(hidden + OLD_MARKER + id), log, ops);
                }
            }
        } catch (IOException e) {
            return; // an unreadable folder: nothing can be judged, so nothing is touched
        }
        String mine = "." + visiblePart(name);
        try (DirectoryStream<Path> leftovers = Files.newDirectoryStream(parent, p -> {
            String n = p.getFileName().toString();
            return (n.startsWith(mine + PARTIAL_MARKER) || n.startsWith(mine + OLD_MARKER)) && !owned.contains(n);
        })) {
            for (Path p : leftovers) {
                log.accept("loramerge: left alone: " + p + " has no owner record (an older loramerge made it, or a merge was killed as it"
                        + " started); if no merge is writing it, " + (p.getFileName().toString().contains(OLD_MARKER)
                        ? "it is an earlier output: move it back to " + parent.resolve(name) + " or delete it" : "delete it"));
            }
        } catch (IOException e) {
            // only a report
        }
    }

    private static void cleanUpAfter(Path lockFile, Path partial, Path old, Consumer<String> log, FileOps ops) {
        try {
            if (OWN_RECORDS.contains(fileKey(lockFile))) {
                return; // an output of this process
            }
        } catch (IOException gone) {
            return;
        }
        try (FileChannel ch = FileChannel.open(lockFile, StandardOpenOption.READ, StandardOpenOption.WRITE)) {
            FileLock lock;
            try {
                lock = ch.tryLock();
            } catch (OverlappingFileLockException ownedHere) {
                return; // an output of this process
            }
            if (lock == null) {
                return; // its owner is alive
            }
            JsonNode record = readRecord(ch);
            if (record == null && ch.size() == 0
                    && Files.getLastModifiedTime(lockFile).toInstant().isAfter(Instant.now().minus(UNWRITTEN_RECORD_GRACE))) {
                return; // just created by a process that has not locked it yet
            }
            String owner = record != null && record.has("pid")
                    ? "process " + record.get("pid").asLong() + (record.has("started") ? " (started " + record.get("started").asText() + ")" : "")
                    : "a process";
            if (Files.exists(partial, LinkOption.NOFOLLOW_LINKS)) {
                ops.deleteTree(partial);
                log.accept("loramerge: removed " + partial + ", the unfinished output of " + owner + ", which is no longer running");
            }
            if (Files.exists(old, LinkOption.NOFOLLOW_LINKS)) {
                Path target = record != null && record.hasNonNull("target") ? lockFile.resolveSibling(record.get("target").asText()) : null;
                if (target != null && !Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
                    ops.move(old, target);
                    log.accept("loramerge: restored " + target + " from " + old + ": " + owner + " stopped while replacing it");
                } else if (target != null && record.path("newOutputInPlace").asBoolean(false)) {
                    ops.deleteTree(old);
                    log.accept("loramerge: removed " + old + ", the output that " + owner + " replaced before it stopped");
                } else {
                    log.accept("loramerge: left alone: " + old + " holds an earlier output of " + (target == null ? "an unknown folder" : target)
                            + " that " + owner + " moved aside before it stopped; move it back or delete it");
                }
            }
            if (!Files.exists(partial, LinkOption.NOFOLLOW_LINKS) && !Files.exists(old, LinkOption.NOFOLLOW_LINKS)) {
                Files.deleteIfExists(lockFile);
            }
        } catch (IOException e) {
            // a record that cannot be opened, locked or acted on is left for a later run
        }
    }

    /**
     * Takes the lock of a fresh owner record. A cleaner of another process may hold it for a
     * moment (it leaves a young empty record alone); one of this process shows as an overlap.
     */
    private static void lockOwn(FileChannel ch, Path lockFile) throws IOException {
        for (int attempt = 0; attempt < 200; attempt++) {
            try {
                if (ch.tryLock() != null) {
                    return;
                }
            } catch (OverlappingFileLockException busy) {
                // another thread of this process is looking at it
            }
            try {
                Thread.sleep(10);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        throw new IOException("could not lock " + lockFile + ", the owner record of a new output; is another process holding it?");
    }

    private static void writeRecord(FileChannel ch, ObjectNode record) throws IOException {
        byte[] bytes = (JSON.writeValueAsString(record) + "\n").getBytes(StandardCharsets.UTF_8);
        ch.truncate(0);
        ByteBuffer b = ByteBuffer.wrap(bytes);
        long pos = 0;
        while (b.hasRemaining()) {
            pos += ch.write(b, pos);
        }
    }

    private static JsonNode readRecord(FileChannel ch) {
        try {
            long size = ch.size();
            if (size == 0 || size > 1 << 20) {
                return null;
            }
            ByteBuffer b = ByteBuffer.allocate((int) size);
            while (b.hasRemaining() && ch.read(b, b.position()) >= 0) {
                // read on
            }
            JsonNode node = JSON.readTree(new String(b.array(), 0, b.position(), StandardCharsets.UTF_8));
            return node != null && node.isObject() ? node : null;
        } catch (IOException e) {
            return null; // torn by a crash while it was rewritten: unknown
        }
    }

    /**
     * {@code name}, shortened at a character boundary where needed so that the longest hidden name
     * made from it, {@code "." + part + PARTIAL_MARKER + id}, fits in {@value #MAX_NAME_BYTES} bytes of UTF-8.
     */
    static String visiblePart(String name) {
        int budget = MAX_NAME_BYTES - 1 - PARTIAL_MARKER.length() - ID_LENGTH;
        int bytes = 0;
        int end = 0;
        while (end < name.length()) {
            int cp = name.codePointAt(end);
            int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
            if (bytes + n > budget) {
                break;
            }
            bytes += n;
            end += Character.charCount(cp);
        }
        return name.substring(0, end);
    }

    private static Object fileKey(Path p) throws IOException {
        Object key = Files.readAttributes(p, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS).fileKey();
        return key != null ? key : p.toAbsolutePath().normalize();
    }

    private static void toStderr(String line) {
        System.err.println(line);
    }

    /** Deletes {@code dir} and its parents up to {@code top}, the folders an output created, while they are empty. */
    private static void removeEmptyFolders(Path dir, Path top) {
        for (Path d = dir; d != null && d.startsWith(top); d = d.getParent()) {
            try {
                Files.deleteIfExists(d);
            } catch (IOException notEmpty) {
                return; // something else is in it now: it stays
            }
        }
    }

    static void deleteQuietly(Path dir) {
        if (!Files.exists(dir, LinkOption.NOFOLLOW_LINKS)) {
            return;
        }
        try (Stream<Path> walk = Files.walk(dir)) {
            walk.sorted(Comparator.reverseOrder()).forEach(p -> {
                try {
                    Files.deleteIfExists(p);
                } catch (IOException ignored) {
                    // best effort: the folder's hidden name marks it as partial
                }
            });
        } catch (IOException ignored) {
            // best effort, as above
        }
    }
}
