package org.loramerge.spark;

import java.io.IOException;
import java.net.URI;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/** Hadoop file systems as the job uses them. */
final class Stores {
    private Stores() {
    }

    /**
     * The file system of {@code p}; for local paths the raw one, which writes no {@code .crc}
     * side files into model folders.
     */
    static FileSystem of(Path p, Configuration conf) throws IOException {
        FileSystem fs = p.getFileSystem(conf);
        return isLocal(fs) ? FileSystem.getLocal(conf).getRaw() : fs;
    }

    static boolean isLocal(FileSystem fs) {
        return "file".equals(fs.getUri().getScheme());
    }

    static boolean isLocal(Path qualified) {
        return "file".equals(qualified.toUri().getScheme());
    }

    /** A location as the manifest writes it (a path or a URI), made absolute on the driver: a relative path is the driver's. */
    static Path qualify(String location, Configuration conf) throws IOException {
        Path p = new Path(location);
        return p.getFileSystem(conf).makeQualified(p);
    }

    /** The local file of a qualified {@code file:} path. */
    static java.nio.file.Path localFile(Path qualified) {
        return java.nio.file.Path.of(URI.create(qualified.toUri().toString()));
    }
}
