package org.loramerge.api;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.errors.UserException;

/** Several adapter folders (the --adapter options of a combination), opened in order and closed together. */
public final class Adapters implements AutoCloseable {
    private final List<LoraAdapter> list;

    private Adapters(List<LoraAdapter> list) {
        this.list = list;
    }

    /** Opens every folder ({@code followSymlinks}: --follow-symlinks); on a failure closes those already open. */
    public static Adapters open(List<Path> dirs, boolean followSymlinks) throws UserException, IOException {
        List<LoraAdapter> opened = new ArrayList<>();
        boolean ok = false;
        try {
            for (Path d : dirs) {
                opened.add(LoraMerge.openAdapter(d, followSymlinks));
            }
            ok = true;
            return new Adapters(opened);
        } finally {
            if (!ok) {
                for (LoraAdapter a : opened) {
                    a.close();
                }
            }
        }
    }

    public List<LoraAdapter> list() {
        return list;
    }

    @Override
    public void close() throws IOException {
        IOException first = null;
        for (LoraAdapter a : list) {
            try {
                a.close();
            } catch (IOException e) {
                if (first == null) {
                    first = e;
                }
            }
        }
        if (first != null) {
            throw first;
        }
    }
}
