package org.loramerge.cli;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.SafetensorsException;

/** The --adapter folders of a command, opened in order and closed together. */
final class Adapters implements AutoCloseable {
    private final List<LoraAdapter> list;

    private Adapters(List<LoraAdapter> list) {
        this.list = list;
    }

    /** Opens every folder ({@code followSymlinks}: --follow-symlinks); on a failure closes those already open. */
    static Adapters open(List<Path> dirs, boolean followSymlinks) throws CliException, SafetensorsException, AdapterException, IOException {
        List<LoraAdapter> opened = new ArrayList<>();
        boolean ok = false;
        try {
            for (Path d : dirs) {
                opened.add(MergeCommand.openAdapter(d, followSymlinks));
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

    List<LoraAdapter> list() {
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
