package org.loramerge.spark;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Stream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RemoteIterator;

/**
 * The record that makes an output complete: {@value #NAME} inside the output folder, written last,
 * listing every file of the merge with its size and SHA-256. An output without it, or whose files
 * differ from it, is not a finished merge, whatever else the folder holds.
 *
 * @param line        the manifest line that made the output
 * @param id          that line's {@code ManifestEntry.id()}: its locations, combination and output-changing options
 * @param inputs      the fingerprint of the inputs the merge read ({@link InputFingerprint})
 * @param attempt     the task attempt whose bytes these are
 * @param checksum    SHA-256 over the files: of the lines "SHA256  NAME\n" in name order, as sha256sum lists them
 * @param bytes       the files' total size
 * @param files       every file of the output but this record, by name relative to the folder
 * @param committedAt when the record was made (ISO-8601)
 */
record CompletionMarker(int line, String id, String inputs, String attempt, String checksum, long bytes, List<FileEntry> files, String committedAt) {
    /** The marker's file name; Hadoop's tools skip names starting with '_', as they skip _SUCCESS. */
    static final String NAME = "_LORAMERGE_COMMITTED";
    /** Written into an output on an object store by the attempt holding its claim, before any other file, holding its attempt id; deleted after {@link #NAME}. */
    static final String WRITING = "_LORAMERGE_WRITING";

    private static final ObjectMapper JSON = new ObjectMapper().setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE);

    /** One file of an output. */
    record FileEntry(String name, long bytes, String sha256) {
    }

    /** The record of the merged model in the local folder {@code folder}, hashing every file in it. */
    static CompletionMarker of(java.nio.file.Path folder, int line, String attempt) throws IOException {
        return of(folder, line, null, null, attempt);
    }

    /** The record of the merged model in {@code folder}, made by the line with id {@code id} from inputs with fingerprint {@code inputs}. */
    static CompletionMarker of(java.nio.file.Path folder, int line, String id, String inputs, String attempt) throws IOException {
        List<FileEntry> files = new ArrayList<>();
        try (Stream<java.nio.file.Path> walk = Files.walk(folder)) {
            for (java.nio.file.Path p : (Iterable<java.nio.file.Path>) walk.sorted()::iterator) {
                if (Files.isRegularFile(p)) {
                    String name = folder.relativize(p).toString().replace('\\', '/');
                    if (!name.equals(NAME)) {
                        try (InputStream in = Files.newInputStream(p)) {
                            files.add(new FileEntry(name, Files.size(p), sha256(in)));
                        }
                    }
                }
            }
        }
        return of(line, id, inputs, attempt, files);
    }

    static CompletionMarker of(int line, String id, String inputs, String attempt, List<FileEntry> files) {
        List<FileEntry> sorted = new ArrayList<>(files);
        sorted.sort((a, b) -> a.name().compareTo(b.name()));
        StringBuilder listing = new StringBuilder();
        long total = 0;
        for (FileEntry f : sorted) {
            listing.append(f.sha256()).append("  ").append(f.name()).append('\n');
            total += f.bytes();
        }
        String checksum = HexFormat.of().formatHex(digest().digest(listing.toString().getBytes(StandardCharsets.UTF_8)));
        return new CompletionMarker(line, id, inputs, attempt, checksum, total, List.copyOf(sorted), Instant.now().toString());
    }

    /** Writes this record as {@code dir/}{@value #NAME}, replacing one there. */
    void write(FileSystem fs, Path dir) throws IOException {
        try (FSDataOutputStream out = fs.create(new Path(dir, NAME), true)) {
            out.write(JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(this));
        }
    }

    /** The record in {@code dir}, or null when there is none. */
    static CompletionMarker read(FileSystem fs, Path dir) throws IOException {
        Path p = new Path(dir, NAME);
        if (!fs.exists(p)) {
            return null;
        }
        try (InputStream in = fs.open(p)) {
            return JSON.readValue(in, CompletionMarker.class);
        } catch (IOException e) {
            throw new IOException(p + ": unreadable completion record (" + e.getMessage() + ")", e);
        }
    }

    /**
     * What differs between this record and the files in {@code dir} (a missing, extra or changed
     * file, read back in full and hashed), or null when they match.
     */
    String mismatch(FileSystem fs, Path dir) throws IOException {
        Map<String, FileStatus> present = new TreeMap<>();
        String root = fs.getFileStatus(dir).getPath().toUri().getPath();
        RemoteIterator<LocatedFileStatus> it = fs.listFiles(dir, true);
        while (it.hasNext()) {
            LocatedFileStatus s = it.next();
            String name = s.getPath().toUri().getPath().substring(root.length() + 1);
            if (!name.equals(NAME) && !name.equals(WRITING)) {
                present.put(name, s);
            }
        }
        for (FileEntry f : files) {
            FileStatus s = present.remove(f.name());
            if (s == null) {
                return f.name() + " is missing";
            }
            if (s.getLen() != f.bytes()) {
                return f.name() + " has " + s.getLen() + " bytes, the record says " + f.bytes();
            }
            try (InputStream in = fs.open(s.getPath())) {
                if (!sha256(in).equals(f.sha256())) {
                    return f.name() + " differs from its recorded SHA-256";
                }
            }
        }
        return present.isEmpty() ? null : present.keySet().iterator().next() + " is not in the record";
    }

    /**
     * Why this record is not of the line with id {@code lineId} reading inputs with fingerprint
     * {@code lineInputs}, or null when it is.
     */
    String staleness(String lineId, String lineInputs) {
        if (id == null || inputs == null) {
            return "its completion record names no line id or inputs (an older version of the job wrote it)";
        }
        if (!id.equals(lineId)) {
            return "it was written for another line (id " + id + "; this line's is " + lineId
                    + ": a location, the combination or an option that changes the output differs)";
        }
        if (!inputs.equals(lineInputs)) {
            return "its base or adapter files changed since it was written (a file's name, size or modification time differs)";
        }
        return null;
    }

    static String sha256(InputStream in) throws IOException {
        MessageDigest md = digest();
        byte[] buf = new byte[1 << 16];
        for (int n; (n = in.read(buf)) > 0; ) {
            md.update(buf, 0, n);
        }
        return HexFormat.of().formatHex(md.digest());
    }

    private static MessageDigest digest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every Java runtime has SHA-256", e);
        }
    }
}
