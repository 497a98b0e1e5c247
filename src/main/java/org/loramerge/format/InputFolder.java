package org.loramerge.format;

import java.io.IOException;
import java.io.InputStream;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;

import static org.loramerge.format.SafetensorsException.Reason.IO;
import static org.loramerge.format.SafetensorsException.Reason.NOT_A_REGULAR_FILE;
import static org.loramerge.format.SafetensorsException.Reason.OUTSIDE_FOLDER;
import static org.loramerge.format.SafetensorsException.Reason.TOO_LARGE;

/**
 * A folder loramerge reads (a model, an adapter, a merged model to verify) and the rules every file
 * read from it passes before it is opened:
 * <ul>
 * <li>Regular files only. Opening a named pipe blocks until someone writes to it, which may be
 *     never, and a device such as {@code /dev/zero} has no end.</li>
 * <li>A file may resolve, through symbolic links, only inside the folder, or, when the folder is a
 *     snapshot of a Hugging Face cache repository ({@code models--ORG--NAME/snapshots/REV/}, whose
 *     files are links to {@code ../../blobs/HASH}), inside that repository's {@code blobs/}. A link
 *     anywhere else (an index shard or a {@code tokenizer.json} pointing at {@code /etc/passwd}) is
 *     refused unless the user opts in with {@code --follow-symlinks}; what a merge reads it may copy
 *     into its output.</li>
 * <li>JSON files are read up to a cap ({@link #MAX_INDEX_BYTES}, {@link #MAX_CONFIG_BYTES}), so a
 *     huge or endless file fails with a message rather than exhausting the heap.</li>
 * </ul>
 */
public final class InputFolder {
    /**
     * Largest {@code model.safetensors.index.json} read: 64 MB. An index entry takes about 100 bytes;
     * the largest public checkpoints (671B-parameter MoE models with about 90,000 tensors) have
     * indexes of about 9 MB, so this leaves room for seven times as many tensors.
     */
    public static final long MAX_INDEX_BYTES = 64_000_000L;
    /**
     * Largest {@code config.json} or {@code adapter_config.json} read: 16 MB. Model configs are a few
     * kB (a label map of 100,000 classes reaches 3 MB); an adapter config grows with its lists of
     * modules and token ids, about 80 bytes an entry, and its patterns are held to far less by
     * AdapterConfig's bound on their matching time.
     */
    public static final long MAX_CONFIG_BYTES = 16_000_000L;

    private final Path dir;
    private final Path realDir;
    /** The cache repository's blobs/ folder where {@code dir} is one of its snapshots, else null. */
    private final Path realBlobs;
    private final boolean followSymlinks;

    private InputFolder(Path dir, Path realDir, Path realBlobs, boolean followSymlinks) {
        this.dir = dir;
        this.realDir = realDir;
        this.realBlobs = realBlobs;
        this.followSymlinks = followSymlinks;
    }

    /**
     * The folder {@code dir}.
     *
     * @param followSymlinks read files wherever their links lead (the user's {@code --follow-symlinks})
     * @throws IOException when {@code dir} is not a folder
     */
    public static InputFolder of(Path dir, boolean followSymlinks) throws IOException {
        if (!Files.isDirectory(dir)) {
            throw new IOException(dir + " is not a folder; pass the folder that holds the files");
        }
        Path real = dir.toRealPath();
        Path blobs = null;
        Path parent = real.getParent();
        // the Hugging Face cache: hub/models--ORG--NAME/{blobs/, refs/, snapshots/REV/}
        if (parent != null && parent.getFileName() != null && parent.getFileName().toString().equals("snapshots")
                && parent.getParent() != null && Files.isDirectory(parent.getParent().resolve("blobs"), LinkOption.NOFOLLOW_LINKS)) {
            blobs = parent.getParent().resolve("blobs").toRealPath();
        }
        return new InputFolder(dir, real, blobs, followSymlinks);
    }

    public Path dir() {
        return dir;
    }

    public boolean followsSymlinks() {
        return followSymlinks;
    }

    /** Whether {@code dir} is a snapshot of a Hugging Face cache repository, whose blobs/ its links may reach. */
    public boolean isCacheSnapshot() {
        return realBlobs != null;
    }

    /**
     * Checks that {@code file} (in this folder) may be read: it exists, resolves inside the folder
     * (or the cache's blobs/, or anywhere with --follow-symlinks) and is a regular file.
     *
     * @return {@code file}, for chaining
     */
    public Path check(Path file) throws SafetensorsException {
        boolean link = Files.isSymbolicLink(file);
        Path real;
        try {
            real = file.toRealPath();
        } catch (NoSuchFileException e) {
            if (link) {
                throw new SafetensorsException(IO, file, null, "is a symbolic link to " + linkTarget(file)
                        + ", which does not exist; the download is incomplete: download the model again");
            }
            throw new SafetensorsException(IO, file, null, "file not found");
        } catch (IOException e) {
            throw new SafetensorsException(IO, file, null, "cannot resolve: " + e.getMessage(), e);
        }
        if (!followSymlinks && !real.startsWith(realDir) && (realBlobs == null || !real.startsWith(realBlobs))) {
            String allowed = realBlobs == null ? "the folder " + dir : "the folder " + dir + " and its Hugging Face cache's " + realBlobs;
            throw new SafetensorsException(OUTSIDE_FOLDER, file, null, "leads through a symbolic link to " + real + ", outside " + allowed
                    + "; loramerge reads (and copies into its output) only files inside the folders it is given. Copy the file into the folder, "
                    + "or pass --follow-symlinks if you trust where the link points");
        }
        requireRegularFile(file, real);
        return file;
    }

    /** Refuses anything but a regular file (after links), before it is opened: a pipe would block, a device never end. */
    public static void requireRegularFile(Path file) throws SafetensorsException {
        requireRegularFile(file, file);
    }

    private static void requireRegularFile(Path file, Path real) throws SafetensorsException {
        BasicFileAttributes attrs;
        try {
            attrs = Files.readAttributes(real, BasicFileAttributes.class);
        } catch (NoSuchFileException e) {
            throw new SafetensorsException(IO, file, null, "file not found");
        } catch (IOException e) {
            throw new SafetensorsException(IO, file, null, "cannot read its attributes: " + e.getMessage(), e);
        }
        if (!attrs.isRegularFile()) {
            throw new SafetensorsException(NOT_A_REGULAR_FILE, file, null, "is " + kind(real, attrs) + (real.equals(file.toAbsolutePath().normalize()) ? "" : " (" + real + ")")
                    + ", not a regular file; loramerge reads regular files only, since a pipe can block forever and a device never end. "
                    + "Replace it with the file itself");
        }
    }

    /**
     * Reads a small file (JSON) whole, refusing one over {@code maxBytes}: its size is checked
     * before reading, and no more than {@code maxBytes} are read should it grow meanwhile.
     *
     * @param what what the file is, for the message ("a shard index")
     */
    public static byte[] readBounded(Path file, long maxBytes, String what) throws SafetensorsException {
        requireRegularFile(file);
        try (FileChannel ch = FileChannel.open(file, StandardOpenOption.READ)) {
            long size = ch.size();
            if (size > maxBytes) {
                throw tooLarge(file, size + " bytes", maxBytes, what);
            }
            InputStream in = Channels.newInputStream(ch);
            byte[] bytes = in.readNBytes((int) maxBytes + 1);
            if (bytes.length > maxBytes) {
                throw tooLarge(file, "larger than " + maxBytes + " bytes", maxBytes, what);
            }
            return bytes;
        } catch (NoSuchFileException e) {
            throw new SafetensorsException(IO, file, null, "file not found");
        } catch (IOException e) {
            throw new SafetensorsException(IO, file, null, "cannot read: " + e.getMessage(), e);
        }
    }

    private static SafetensorsException tooLarge(Path file, String size, long maxBytes, String what) {
        return new SafetensorsException(TOO_LARGE, file, null, "is " + size + ", more than the "
                + maxBytes / 1_000_000 + " MB loramerge reads for " + what + " (real ones are far smaller); the file is not what its name says: "
                + "download or copy it again");
    }

    private static String kind(Path real, BasicFileAttributes attrs) {
        if (attrs.isDirectory()) {
            return "a folder";
        }
        try {
            // POSIX st_mode file type bits (stat(2)): S_IFIFO, S_IFCHR, S_IFBLK, S_IFSOCK
            int type = (Integer) Files.getAttribute(real, "unix:mode") & 0170000;
            switch (type) {
                case 0010000: return "a named pipe (FIFO)";
                case 0020000: return "a character device";
                case 0060000: return "a block device";
                case 0140000: return "a socket";
                default: break;
            }
        } catch (IOException | UnsupportedOperationException | IllegalArgumentException | ClassCastException e) {
            // no unix view here: the generic words below
        }
        return "a special file";
    }

    private static String linkTarget(Path link) {
        try {
            return Files.readSymbolicLink(link).toString();
        } catch (IOException e) {
            return "a path";
        }
    }
}
