package org.loramerge.spark;

import java.io.IOException;
import java.net.URI;
import java.io.FilterOutputStream;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * A store that behaves as an object store does for the job: scheme {@value #SCHEME} over local
 * files, no rename (an object store copies, so the job must never rely on it), and a create that
 * fails atomically when the object exists (as ABFS, GCS and conditional S3 writes do). Lets the
 * tests run the MARKER commit and the input copies end to end without a real store.
 */
public final class ObjectStoreFileSystem extends RawLocalFileSystem {
    static final String SCHEME = "objstore";
    private static final URI NAME = URI.create(SCHEME + ":///");
    /** Called with each file opened for reading before it is opened, for tests; null in general. */
    static volatile java.util.function.Consumer<Path> beforeOpen;
    /** A file name whose writes fail while set (an outage of the store for that object), for tests; null in general. */
    static volatile String unwritable;

    @Override
    public URI getUri() {
        return NAME;
    }

    @Override
    public String getScheme() {
        return SCHEME;
    }

    /** Plain statuses: the local file system's own ones read permissions through java.io.File, which takes only file: URIs. */
    @Override
    public FileStatus getFileStatus(Path f) throws IOException {
        return plain(super.getFileStatus(f));
    }

    @Override
    public FileStatus[] listStatus(Path f) throws IOException {
        FileStatus[] all = super.listStatus(f);
        for (int i = 0; i < all.length; i++) {
            all[i] = plain(all[i]);
        }
        return all;
    }

    private static FileStatus plain(FileStatus s) {
        return new FileStatus(s.getLen(), s.isDirectory(), 1, s.getBlockSize(), s.getModificationTime(), s.getPath());
    }

    @Override
    public org.apache.hadoop.fs.FSDataInputStream open(Path f, int bufferSize) throws IOException {
        java.util.function.Consumer<Path> hook = beforeOpen;
        if (hook != null) {
            hook.accept(f);
        }
        return super.open(f, bufferSize);
    }

    @Override
    public boolean rename(Path src, Path dst) throws IOException {
        throw new UnsupportedOperationException(SCHEME + ": an object store has no rename (" + src + " -> " + dst + ")");
    }

    @Override
    public FSDataOutputStream create(Path f, boolean overwrite, int bufferSize, short replication, long blockSize, Progressable progress)
            throws IOException {
        return publishedOnClose(f, overwrite);
    }

    @Override
    public FSDataOutputStream create(Path f, FsPermission permission, boolean overwrite, int bufferSize, short replication, long blockSize,
                                     Progressable progress) throws IOException {
        return publishedOnClose(f, overwrite);
    }

    @Override
    public FSDataOutputStream createNonRecursive(Path f, FsPermission permission, boolean overwrite, int bufferSize, short replication,
                                                 long blockSize, Progressable progress) throws IOException {
        return publishedOnClose(f, overwrite);
    }

    /** As an object store's PUT: the bytes go to an upload outside the store, and the object appears whole when the stream closes. */
    private FSDataOutputStream publishedOnClose(Path f, boolean overwrite) throws IOException {
        if (f.getName().equals(unwritable)) {
            throw new IOException(f + ": injected store outage (writes to " + unwritable + " fail)");
        }
        claimName(f, overwrite);
        java.nio.file.Path target = pathToFile(f).toPath();
        Files.createDirectories(target.getParent());
        java.nio.file.Path uploads = java.nio.file.Path.of(System.getProperty("java.io.tmpdir"), "objstore-uploads");
        Files.createDirectories(uploads);
        java.nio.file.Path upload = Files.createTempFile(uploads, "upload-", "");
        OutputStream o = new FilterOutputStream(Files.newOutputStream(upload)) {
            private boolean closed;

            @Override
            public void write(byte[] b, int off, int len) throws IOException {
                out.write(b, off, len);
            }

            @Override
            public void close() throws IOException {
                if (closed) {
                    return;
                }
                closed = true;
                super.close();
                Files.move(upload, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            }
        };
        return new FSDataOutputStream(o, statistics);
    }

    /** Without overwrite, creates the file exclusively (O_EXCL): of two racing creates exactly one succeeds. */
    private void claimName(Path f, boolean overwrite) throws IOException {
        if (overwrite) {
            return;
        }
        java.nio.file.Path local = pathToFile(f).toPath();
        Files.createDirectories(local.getParent());
        try {
            Files.createFile(local);
        } catch (java.nio.file.FileAlreadyExistsException e) {
            throw new FileAlreadyExistsException(f + " exists");
        }
    }

    /** The store's location of a local folder. */
    static String location(java.nio.file.Path local) {
        return SCHEME + "://" + local.toAbsolutePath();
    }
}
