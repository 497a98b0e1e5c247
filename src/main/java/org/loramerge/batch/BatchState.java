package org.loramerge.batch;

import com.fasterxml.jackson.annotation.JsonAutoDetect;
import com.fasterxml.jackson.annotation.PropertyAccessor;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.DigestInputStream;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;
import org.loramerge.api.MergeResult;
import org.loramerge.errors.OutputException;
import org.loramerge.format.InputFolder;

/**
 * The batch's memory of what it wrote, a folder beside the manifest ({@code merges.jsonl.state/}):
 * one record per manifest line, {@code ID.json} by {@link ManifestEntry#id()}, written atomically
 * (a temporary file renamed into place). A record is written as {@code running} before its merge
 * starts and as {@code done} after the output is committed, with the SHA-256 of every file of the
 * output and the merge's summary. The output folders themselves hold only what {@code merge} writes.
 * One batch at a time uses a state folder: {@link #open} takes a lock on its {@code .lock} file for
 * the batch's life. Outputs inside the manifest's folder are recorded relative to it, and the ids
 * come from the locations as written ({@link ManifestEntry#relativeTo}), so a project folder moved
 * with its manifest, state and outputs keeps its records. A done record also holds a fingerprint of
 * the line's inputs ({@link #inputs}): a base or adapter changed in place makes the line run again.
 */
final class BatchState implements AutoCloseable {
    static final String RUNNING = "running";
    static final String DONE = "done";
    /** Largest record read; a record holds a summary of a few kB per adapted tensor. */
    private static final long MAX_RECORD_BYTES = 64_000_000L;
    private static final ObjectMapper JSON = mapper();

    /**
     * A state record: the line's id and output (relative to the manifest's folder when inside it),
     * and once done its files' hashes, checksum, bytes, the {@link #inputs fingerprint} of the inputs
     * it was merged from (null in a record that has none) and summary.
     */
    record Entry(String id, int line, String out, String status, Map<String, String> files, String checksum, long bytes, String inputs) {
    }

    private final Path dir;
    /** The manifest's folder: outputs inside it are recorded relative to it, so that the project folder can move. */
    private final Path root;
    private final FileChannel lockChannel;
    private final FileLock lock;
    private final Map<String, Entry> byId = new HashMap<>();

    private BatchState(Path dir, Path root, FileChannel lockChannel, FileLock lock) {
        this.dir = dir;
        this.root = root.toAbsolutePath().normalize();
        this.lockChannel = lockChannel;
        this.lock = lock;
    }

    private static ObjectMapper mapper() {
        ObjectMapper m = new ObjectMapper().setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE)
                .enable(SerializationFeature.INDENT_OUTPUT);
        m.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.PUBLIC_ONLY);
        return m;
    }

    /**
     * Opens (creating) the state folder {@code dir} of the manifest in the folder {@code root} and
     * locks it; another batch holding it is an output failure (exit 4).
     */
    static BatchState open(Path dir, Path root) throws OutputException {
        try {
            Files.createDirectories(dir);
        } catch (IOException e) {
            throw new OutputException(dir, "cannot create the batch's state folder " + dir + " (" + e.getMessage()
                    + "); choose a writable one with --state DIR", e);
        }
        FileChannel ch = null;
        try {
            ch = FileChannel.open(dir.resolve(".lock"), StandardOpenOption.CREATE, StandardOpenOption.WRITE);
            FileLock lock;
            try {
                lock = ch.tryLock();
            } catch (OverlappingFileLockException e) {
                lock = null; // a batch of this process holds it
            }
            if (lock == null) {
                ch.close();
                throw new OutputException(dir, "another loramerge batch is running with the state folder " + dir
                        + "; wait for it to finish (two batches would write the same outputs)", null);
            }
            BatchState s = new BatchState(dir, root, ch, lock);
            s.load();
            return s;
        } catch (IOException e) {
            closeQuietly(ch);
            throw new OutputException(dir, "cannot use the batch's state folder " + dir + ": " + e.getMessage(), e);
        }
    }

    Path dir() {
        return dir;
    }

    private void load() throws IOException {
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(dir, "*.json")) {
            for (Path p : ds) {
                Entry e = readRecord(p);
                if (e != null) {
                    byId.put(e.id(), e);
                }
            }
        }
    }

    /** A record, or null for a file that is not one (it is ignored: the line it stood for is redone). */
    private static Entry readRecord(Path p) {
        try {
            JsonNode n = JSON.readTree(InputFolder.readBounded(p, MAX_RECORD_BYTES, "a batch state record"));
            Map<String, String> files = new TreeMap<>();
            JsonNode f = n.path("files");
            for (Iterator<Map.Entry<String, JsonNode>> it = f.fields(); it.hasNext(); ) {
                Map.Entry<String, JsonNode> x = it.next();
                files.put(x.getKey(), x.getValue().asText());
            }
            if (!n.path("id").isTextual() || !n.path("out").isTextual()) {
                return null;
            }
            return new Entry(n.get("id").textValue(), n.path("line").asInt(), n.get("out").textValue(), n.path("status").asText(),
                    files, n.path("checksum").asText(null), n.path("bytes").asLong(), n.path("inputs").asText(null));
        } catch (Exception e) {
            return null;
        }
    }

    /** The record of line {@code id}, or null. */
    synchronized Entry get(String id) {
        return byId.get(id);
    }

    /** Whether any record, done or running, names {@code out}: the batch wrote (or was writing) that folder. */
    synchronized boolean wrote(Path out) {
        Path o = out.toAbsolutePath().normalize();
        return byId.values().stream().anyMatch(e -> root.resolve(e.out()).normalize().equals(o));
    }

    /** {@code out} as a record names it: relative to the manifest's folder when inside it, else absolute. */
    private String location(Path out) {
        Path o = out.toAbsolutePath().normalize();
        return o.startsWith(root) ? root.relativize(o).toString() : o.toString();
    }

    /** Records that line {@code id} is about to write {@code out}, before anything is written there. */
    synchronized void running(String id, int line, Path out) throws OutputException {
        Entry e = new Entry(id, line, location(out), RUNNING, Map.of(), null, 0, null);
        write(e, null);
        byId.put(id, e);
    }

    /**
     * Forgets the {@code running} record of line {@code id}, whose merge failed and so wrote nothing:
     * {@code previous} (the record before it) comes back, or none; a folder that appears at the
     * output later is then not taken for the batch's.
     */
    synchronized void failed(String id, Entry previous) throws OutputException {
        if (previous != null) {
            write(previous, null);
            byId.put(id, previous);
            return;
        }
        byId.remove(id);
        Path file = dir.resolve(id + ".json");
        try {
            Files.deleteIfExists(file);
        } catch (IOException x) {
            throw new OutputException(file, "cannot remove the batch's state record " + file + ": " + x.getMessage()
                    + "; remove it by hand before running the batch again", x);
        }
    }

    /** Records that line {@code id} wrote {@code out} with these files from inputs of fingerprint {@code inputs}, and what the merge said. */
    synchronized void done(String id, int line, Path out, Map<String, String> files, String checksum, long bytes, String inputs,
            MergeResult summary) throws OutputException {
        Entry e = new Entry(id, line, location(out), DONE, Map.copyOf(files), checksum, bytes, inputs);
        write(e, summary);
        byId.put(id, e);
    }

    private void write(Entry e, MergeResult summary) throws OutputException {
        ObjectNode n = JSON.createObjectNode();
        n.put("id", e.id());
        n.put("line", e.line());
        n.put("out", e.out());
        n.put("status", e.status());
        n.set("files", JSON.valueToTree(new TreeMap<>(e.files())));
        n.put("checksum", e.checksum());
        n.put("bytes", e.bytes());
        n.put("inputs", e.inputs());
        n.set("summary", summary == null ? null : JSON.valueToTree(summary));
        Path file = dir.resolve(e.id() + ".json");
        Path tmp = dir.resolve("." + e.id() + ".json.tmp");
        try {
            Files.write(tmp, JSON.writeValueAsBytes(n));
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.WRITE)) {
                ch.force(true);
            }
            Files.move(tmp, file, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
        } catch (IOException x) {
            throw new OutputException(file, "cannot write the batch's state record " + file + ": " + x.getMessage()
                    + "; free space or choose another --state DIR", x);
        }
    }

    /**
     * The SHA-256 of every regular file under {@code out}, by its path relative to {@code out}
     * ({@code /}-separated), in name order. A symbolic link or anything but a file or folder in it
     * is hashed as its kind, so a replaced file never matches. The files are hashed at once on up to
     * {@link #HASH_THREADS} threads.
     */
    static Map<String, String> hashes(Path out) throws IOException {
        Hashed h = hashes(List.of(out)).get(0);
        if (h.error() != null) {
            throw h.error();
        }
        return h.files();
    }

    /** One output's file hashes ({@link #hashes(Path)}), or why they could not be read. */
    record Hashed(Map<String, String> files, IOException error) {
    }

    /**
     * Threads that hash at once. SHA-256 runs at about 1-2 GB/s on one core, so one thread per output
     * made the hashing of a batch's outputs, which reads every byte written, take longer than writing
     * them (16 outputs of 3 GB: 48 s after a 25 s pass over the base).
     */
    static final int HASH_THREADS = Math.max(1, Runtime.getRuntime().availableProcessors());

    /**
     * {@link #hashes(Path)} of each of {@code outs}, in order, all their files hashed at once on up to
     * {@link #HASH_THREADS} threads; an output whose listing or file cannot be read gets its error.
     */
    static List<Hashed> hashes(List<Path> outs) {
        List<Map<String, Object>> listed = new ArrayList<>();
        List<IOException> errors = new ArrayList<>();
        List<Callable<String>> tasks = new ArrayList<>();
        for (Path out : outs) {
            Map<String, Object> files = new TreeMap<>();
            IOException error = null;
            try (Stream<Path> walk = Files.walk(out)) {
                for (Path p : walk.sorted().toList()) {
                    if (p.equals(out)) {
                        continue;
                    }
                    String name = out.relativize(p).toString().replace('\\', '/');
                    if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) {
                        files.put(name, tasks.size());
                        tasks.add(() -> sha256(p));
                    } else if (!Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS)) {
                        files.put(name, "not a regular file");
                    }
                }
            } catch (IOException | UncheckedIOException x) {
                error = x instanceof UncheckedIOException u ? u.getCause() : (IOException) x;
            }
            listed.add(files);
            errors.add(error);
        }
        List<Future<String>> sums = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(Math.max(1, Math.min(HASH_THREADS, tasks.size())), r -> {
            Thread t = new Thread(r, "loramerge-hash");
            t.setDaemon(true);
            return t;
        });
        try {
            for (Callable<String> task : tasks) {
                sums.add(pool.submit(task));
            }
            List<Hashed> hashed = new ArrayList<>();
            for (int k = 0; k < outs.size(); k++) {
                Map<String, String> files = new TreeMap<>();
                IOException error = errors.get(k);
                for (Map.Entry<String, Object> f : listed.get(k).entrySet()) {
                    if (error != null) {
                        break;
                    }
                    if (f.getValue() instanceof Integer i) {
                        try {
                            files.put(f.getKey(), sums.get(i).get());
                        } catch (ExecutionException x) {
                            error = x.getCause() instanceof IOException io ? io : new IOException(x.getCause());
                        }
                    } else {
                        files.put(f.getKey(), (String) f.getValue());
                    }
                }
                hashed.add(error == null ? new Hashed(files, null) : new Hashed(null, error));
            }
            return hashed;
        } catch (InterruptedException x) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while hashing the outputs", x);
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * A fingerprint of the input folders {@code folders} (the base, then each adapter): the SHA-256 of
     * every file's folder number, path relative to its folder, size and modification time, in name
     * order. A file replaced, rewritten, added or removed in place changes it; reading no file's bytes,
     * it costs a listing. A link is described by its target's size and time ({@code missing} when the
     * target is gone).
     */
    static String inputs(List<Path> folders) throws IOException {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < folders.size(); i++) {
            Path folder = folders.get(i);
            try (Stream<Path> walk = Files.walk(folder)) {
                for (Path p : walk.sorted().toList()) {
                    if (Files.isDirectory(p)) {
                        continue;
                    }
                    String name = folder.relativize(p).toString().replace('\\', '/');
                    String what;
                    try {
                        BasicFileAttributes a = Files.readAttributes(p, BasicFileAttributes.class);
                        what = a.size() + "\t" + a.lastModifiedTime().toInstant();
                    } catch (IOException x) {
                        what = "missing";
                    }
                    sb.append(i).append('\t').append(name).append('\t').append(what).append('\n');
                }
            }
        }
        return HexFormat.of().formatHex(digest().digest(sb.toString().getBytes(StandardCharsets.UTF_8)));
    }

    /**
     * One checksum of an output: the SHA-256 of its listing in the form {@code sha256sum} prints
     * ({@code HASH  NAME} lines, names relative to the output, in name order).
     */
    static String checksum(Map<String, String> files) {
        StringBuilder sb = new StringBuilder();
        for (Map.Entry<String, String> e : files.entrySet()) {
            sb.append(e.getValue()).append("  ").append(e.getKey()).append('\n');
        }
        return HexFormat.of().formatHex(digest().digest(sb.toString().getBytes(StandardCharsets.UTF_8)));
    }

    private static String sha256(Path file) throws IOException {
        MessageDigest md = digest();
        try (InputStream in = new DigestInputStream(Files.newInputStream(file), md)) {
            byte[] buf = new byte[1 << 20];
            while (in.read(buf) >= 0) {
                // digesting
            }
        }
        return HexFormat.of().formatHex(md.digest());
    }

    private static MessageDigest digest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
        }
    }

    /** The records, for tests. */
    synchronized List<Entry> entries() {
        return List.copyOf(byId.values());
    }

    @Override
    public void close() {
        try {
            lock.release();
        } catch (IOException e) {
            // the lock goes with the channel
        }
        closeQuietly(lockChannel);
    }

    private static void closeQuietly(FileChannel ch) {
        if (ch != null) {
            try {
                ch.close();
            } catch (IOException e) {
                // nothing held
            }
        }
    }
}
