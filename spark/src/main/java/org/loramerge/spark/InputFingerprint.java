package org.loramerge.spark;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocatedFileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RemoteIterator;

/**
 * What a merge's inputs were, cheaply: the SHA-256 of the store's listing of the base's and the
 * adapters' files, each as its input's position, its name relative to the input, its size and its
 * modification time. A file replaced, added, removed, grown or rewritten in place changes it; reading
 * no file's bytes, it costs one listing per input.
 */
final class InputFingerprint {
    private InputFingerprint() {
    }

    /** The fingerprint of the inputs at the qualified locations {@code inputs} (the base first, then the adapters). */
    static String of(List<Path> inputs, Configuration conf) throws IOException {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < inputs.size(); i++) {
            Path input = inputs.get(i);
            FileSystem fs = Stores.of(input, conf);
            FileStatus top = fs.getFileStatus(input);
            String root = top.getPath().toUri().getPath();
            List<String> lines = new ArrayList<>();
            RemoteIterator<LocatedFileStatus> it = fs.listFiles(input, true);
            while (it.hasNext()) {
                LocatedFileStatus s = it.next();
                String p = s.getPath().toUri().getPath();
                String name = top.isDirectory() ? p.substring(root.length() + 1) : s.getPath().getName();
                lines.add(i + " " + name + " " + s.getLen() + " " + s.getModificationTime());
            }
            lines.sort(null);
            for (String l : lines) {
                b.append(l).append('\n');
            }
        }
        return CompletionMarker.sha256(new ByteArrayInputStream(b.toString().getBytes(StandardCharsets.UTF_8)));
    }
}
