package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.util.Comparator;
import java.util.List;
import java.util.UUID;
import java.util.stream.Stream;
import org.loramerge.errors.OutputException;

/**
 * An output folder that appears complete or not at all. Everything is written into a hidden
 * temporary folder beside the target; {@link #commit()} fsyncs every file and the folder, then
 * renames it into place. Closing without committing (an error, or Ctrl-C through the shutdown
 * hook) deletes the temporary folder.
 */
public final class AtomicOutput implements AutoCloseable {
    static final String PARTIAL_MARKER = ".loramerge-partial-";

    private final Path target;
    private final Path temp;
    private final boolean overwrite;
    /** The outermost parent folder this output created (null when its folder existed), removed again unless committed. */
    private final Path createdParent;
    private final Thread cleanup;
    private volatile boolean committed;

    private AtomicOutput(Path target, Path temp, boolean overwrite, Path createdParent) {
        this.target = target;
        this.temp = temp;
        this.overwrite = overwrite;
        this.createdParent = createdParent;
        this.cleanup = new Thread(this::discard, "loramerge-cleanup");
    }

    /**
     * Prepares an output at {@code target}, refusing a target that exists (unless overwriting) and
     * any target that is, contains or lies inside one of {@code protectedDirs} (the inputs; one that
     * does not exist cannot overlap and is left to the reader to report). A missing parent folder is
     * created, as PEFT's and mergekit's {@code save_pretrained} do, and removed again if the output
     * is not committed. Commands call this before any planning, so a bad {@code --out} stops them first.
     *
     * @throws OutputException the target exists (without {@code overwrite}), overlaps an input, or cannot be created
     */
    public static AtomicOutput create(Path target, boolean overwrite, List<Path> protectedDirs) throws OutputException {
        Path abs = target.toAbsolutePath().normalize();
        Path parent = abs.getParent();
        if (parent == null) {
            throw new OutputException(abs, "--out " + target + " has no parent folder; name a folder to create", null);
        }
        if (Files.exists(abs, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            if (!overwrite) {
                throw new OutputException(abs, abs + ": --out exists; pass --overwrite to replace it (it is replaced only once the new model is complete)",
                        null);
            }
            if (!Files.isDirectory(abs, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
                throw new OutputException(abs, "--out " + abs + " exists and is not a folder; refusing to replace it, choose another folder", null);
            }
        }
        Path createdParent = null;
        try {
            if (!Files.isDirectory(parent)) {
                Path first = parent;
                while (first.getParent() != null && !Files.exists(first.getParent(), java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
                    first = first.getParent();
                }
                Files.createDirectories(parent);
                createdParent = first;
            }
            Path realTarget = parent.toRealPath().resolve(abs.getFileName());
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
            Path temp = parent.resolve("." + abs.getFileName() + PARTIAL_MARKER + UUID.randomUUID().toString().substring(0, 8));
            Files.createDirectory(temp);
            AtomicOutput out = new AtomicOutput(abs, temp, overwrite, createdParent);
            Runtime.getRuntime().addShutdownHook(out.cleanup);
            return out;
        } catch (IOException e) {
            if (createdParent != null) {
                deleteQuietly(createdParent);
            }
            throw new OutputException(abs, "cannot create --out " + target + " (" + e + "); check the folder's permissions and free space", e);
        } catch (OutputException e) {
            if (createdParent != null) {
                deleteQuietly(createdParent);
            }
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
    public void commit() throws IOException {
        try (Stream<Path> files = Files.list(temp)) {
            for (Path p : (Iterable<Path>) files::iterator) {
                try (FileChannel ch = FileChannel.open(p, StandardOpenOption.READ)) {
                    ch.force(true);
                }
            }
        }
        fsyncDir(temp);
        Path old = null;
        if (Files.exists(target, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
            if (!overwrite) {
                throw new FileAlreadyExistsException(target.toString(), null, "appeared while merging; nothing was replaced");
            }
            old = target.resolveSibling("." + target.getFileName() + ".loramerge-old-" + UUID.randomUUID().toString().substring(0, 8));
            Files.move(target, old, StandardCopyOption.ATOMIC_MOVE);
        }
        Files.move(temp, target, StandardCopyOption.ATOMIC_MOVE);
        committed = true;
        fsyncDir(target.getParent());
        if (old != null) {
            deleteQuietly(old);
        }
    }

    /** Removes what an uncommitted output left: its hidden folder, and the parent folders it created. */
    private void discard() {
        if (!committed) {
            deleteQuietly(temp);
            if (createdParent != null) {
                deleteQuietly(createdParent);
            }
        }
    }

    @Override
    public void close() {
        discard();
        try {
            Runtime.getRuntime().removeShutdownHook(cleanup);
        } catch (IllegalStateException shuttingDown) {
            // the hook is running or has run
        }
    }

    private static void fsyncDir(Path dir) throws IOException {
        try (FileChannel ch = FileChannel.open(dir, StandardOpenOption.READ)) {
            ch.force(true);
        } catch (IOException e) {
            // some file systems refuse to sync a directory; the files themselves are synced
        }
    }

    static void deleteQuietly(Path dir) {
        if (!Files.exists(dir, java.nio.file.LinkOption.NOFOLLOW_LINKS)) {
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
