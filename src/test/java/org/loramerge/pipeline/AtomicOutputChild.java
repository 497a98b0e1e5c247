package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * A second process for {@link AtomicOutputTest}, run in its own JVM:
 * <ul>
 * <li>{@code hold TARGET}: creates an output, writes into it, prints {@code READY} and waits to be killed;</li>
 * <li>{@code halt-at K TARGET}: writes the new output of {@link AtomicOutputTest#writeNewOutput} and commits it with
 * --overwrite, halting the JVM (as SIGKILL would: no shutdown hooks, no finally blocks) just before the
 * commit's file-system step K (0-based); K = -1 halts after the data, before the commit starts;</li>
 * <li>{@code clean TARGET}: creates an output (which first cleans up after dead processes), prints what it
 * said and closes it.</li>
 * </ul>
 */
public final class AtomicOutputChild {
    private AtomicOutputChild() {
    }

    public static void main(String[] args) throws Exception {
        if (args[0].equals("hold")) {
            try (AtomicOutput out = AtomicOutput.create(Path.of(args[1]), false, List.of())) {
                Files.writeString(out.dir().resolve("model.safetensors"), "being written");
                System.out.println("READY");
                System.out.flush();
                Thread.sleep(Long.MAX_VALUE);
            }
        } else if (args[0].equals("halt-at")) {
            int haltAt = Integer.parseInt(args[1]);
            AtomicOutput.FileOps halting = new HaltingOps(haltAt);
            AtomicOutput out = AtomicOutput.create(Path.of(args[2]), true, List.of(), line -> { }, halting);
            AtomicOutputTest.writeNewOutput(out.dir());
            if (haltAt < 0) {
                Runtime.getRuntime().halt(3);
            }
            out.commit();
            out.close();
        } else if (args[0].equals("clean")) {
            try (AtomicOutput out = AtomicOutput.create(Path.of(args[1]), false, List.of(), System.out::println)) {
                System.out.println("cleaned");
            }
        } else {
            throw new IllegalArgumentException(args[0]);
        }
    }

    /** The real file system, but the process dies just before step {@code haltAt}. */
    private static final class HaltingOps implements AtomicOutput.FileOps {
        private final int haltAt;
        private int step;

        HaltingOps(int haltAt) {
            this.haltAt = haltAt;
        }

        private void next() {
            if (step++ == haltAt) {
                Runtime.getRuntime().halt(3);
            }
        }

        @Override
        public void forceFile(Path file) throws IOException {
            next();
            AtomicOutput.SYSTEM.forceFile(file);
        }

        @Override
        public void forceDir(Path dir) throws IOException {
            next();
            AtomicOutput.SYSTEM.forceDir(dir);
        }

        @Override
        public void move(Path from, Path to) throws IOException {
            next();
            AtomicOutput.SYSTEM.move(from, to);
        }

        @Override
        public void deleteTree(Path dir) {
            next();
            AtomicOutput.SYSTEM.deleteTree(dir);
        }
    }
}
