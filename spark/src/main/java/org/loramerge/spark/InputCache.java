package org.loramerge.spark;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RemoteIterator;

/**
 * The merges' input folders as local folders. A folder on the local file system is used in place;
 * one on any other store (HDFS, an object store) is copied once per executor JVM into
 * {@code WORK_DIR/loramerge-inputs-ID/} and shared by every task of that JVM that names it, so a
 * base that sixteen lines share is downloaded once per executor, not sixteen times. A copy is
 * keyed by the location and the store's listing of it (file names, sizes, modification times): a
 * folder changed on the store is copied again. Each task that takes a copy gives it back
 * ({@link #release}) when its merge is done; the last one deletes it, so that an executor holds
 * only the copies its running tasks use. What is left when the JVM exits is deleted then.
 */
final class InputCache {
    /** The copies by key, with how many tasks use each; guarded by itself. */
    private static final Map<String, Copy> COPIES = new HashMap<>();
    /** The key of each local copy handed out; guarded by COPIES. */
    private static final Map<java.nio.file.Path, String> KEYS = new HashMap<>();
    private static final String JVM_ID = UUID.randomUUID().toString().substring(0, 8);
    private static volatile java.nio.file.Path root;

    private InputCache() {
    }

    /** The local folder holding the input at the qualified location {@code input}. */
    static java.nio.file.Path local(Path input, Configuration conf, java.nio.file.Path workDir) throws IOException {
        if (Stores.isLocal(input)) {
            return Stores.localFile(input);
        }
        FileSystem fs = Stores.of(input, conf);
        String key = input + "\n" + fingerprint(fs, input);
        Copy copy;
        boolean first;
        synchronized (COPIES) {
            copy = COPIES.get(key);
            first = copy == null;
            if (first) {
                copy = new Copy();
                COPIES.put(key, copy);
            }
            copy.users++;
        }
        if (first) {
            try {
                java.nio.file.Path local = download(fs, input, key, workDir);
                synchronized (COPIES) {
                    KEYS.put(local, key);
                }
                copy.future.complete(local);
            } catch (IOException | RuntimeException e) {
                copy.future.completeExceptionally(e);
            }
        }
        try {
            return copy.future.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            giveBack(key, copy);
            throw new IOException("interrupted while " + input + " was copied", e);
        } catch (ExecutionException e) {
            giveBack(key, copy);
            Throwable c = e.getCause();
            throw c instanceof IOException io ? io : new IOException(input + ": copy failed: " + c, c);
        }
    }

    /**
     * Gives back the folder {@code local} that {@link #local} returned: the last task to give back a
     * copy deletes it. A folder used in place (a local input) is left alone.
     */
    static void release(java.nio.file.Path local) {
        synchronized (COPIES) {
            String key = KEYS.get(local);
            Copy copy = key == null ? null : COPIES.get(key);
            if (copy != null) {
                giveBack(key, copy);
            }
        }
    }

    /** Counts one user of {@code copy} less; deletes it (or forgets a failed one) after the last. */
    private static void giveBack(String key, Copy copy) {
        synchronized (COPIES) {
            if (--copy.users > 0) {
                return;
            }
            COPIES.remove(key, copy);
            java.nio.file.Path local = copy.future.isDone() && !copy.future.isCompletedExceptionally() ? copy.future.join() : null;
            if (local != null) {
                KEYS.remove(local);
                // the folder named after the key's hash, holding the copy; a task taking the key again waits for this lock and downloads anew
                deleteTree(local.getParent());
            }
        }
    }

    /** A copy being made or made, and how many tasks use it. */
    private static final class Copy {
        final CompletableFuture<java.nio.file.Path> future = new CompletableFuture<>();
        int users;
    }

    private static String fingerprint(FileSystem fs, Path input) throws IOException {
        StringBuilder b = new StringBuilder();
        RemoteIterator<LocatedFileStatus> it = fs.listFiles(input, true);
        while (it.hasNext()) {
            LocatedFileStatus s = it.next();
            b.append(s.getPath()).append(' ').append(s.getLen()).append(' ').append(s.getModificationTime()).append('\n');
        }
        if (b.length() == 0) {
            throw new IOException(input + ": no files there; check the manifest's location");
        }
        return b.toString();
    }

    private static java.nio.file.Path download(FileSystem fs, Path input, String key, java.nio.file.Path workDir) throws IOException {
        java.nio.file.Path dir = root(workDir).resolve(CompletionMarker.sha256(
                new java.io.ByteArrayInputStream(key.getBytes(StandardCharsets.UTF_8))).substring(0, 16));
        java.nio.file.Path target = dir.resolve(input.getName());
        java.nio.file.Path partial = dir.resolve(".partial-" + UUID.randomUUID());
        Files.createDirectories(partial);
        try {
            String base = fs.getFileStatus(input).getPath().toUri().getPath();
            RemoteIterator<LocatedFileStatus> it = fs.listFiles(input, true);
            while (it.hasNext()) {
                LocatedFileStatus s = it.next();
                java.nio.file.Path local = partial.resolve(s.getPath().toUri().getPath().substring(base.length() + 1));
                Files.createDirectories(local.getParent());
                try (InputStream in = fs.open(s.getPath()); OutputStream o = Files.newOutputStream(local)) {
                    in.transferTo(o);
                }
            }
            Files.move(partial, target, StandardCopyOption.ATOMIC_MOVE);
            return target;
        } finally {
            deleteTree(partial);
        }
    }

    private static synchronized java.nio.file.Path root(java.nio.file.Path workDir) throws IOException {
        if (root == null) {
            java.nio.file.Path r = workDir.resolve("loramerge-inputs-" + JVM_ID);
            Files.createDirectories(r);
            Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteTree(r), "loramerge-inputs-cleanup"));
            root = r;
        }
        return root;
    }

    static void deleteTree(java.nio.file.Path dir) {
        if (!Files.exists(dir)) {
            return;
        }
        try (Stream<java.nio.file.Path> walk = Files.walk(dir)) {
            for (java.nio.file.Path p : (Iterable<java.nio.file.Path>) walk.sorted(Comparator.reverseOrder())::iterator) {
                Files.deleteIfExists(p);
            }
        } catch (IOException e) {
            // a leftover in the work folder; the next cleanup of the folder takes it
        }
    }
}
