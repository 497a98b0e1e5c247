package org.loramerge.pipeline;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.cli.ExitCodes;
import org.loramerge.cli.Main;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.loramerge.testutil.TinyModels.hashTree;
import static org.loramerge.testutil.TinyModels.list;

/**
 * The commit protocol of {@link AtomicOutput}: whatever step fails, and wherever the process is
 * killed, --out holds the complete old output or the complete new one (after a kill between the
 * two renames: once the next run has put the old one back), everything is fsynced before it
 * becomes visible, and what a killed process leaves behind is cleaned up by the next run, never
 * what a live one is writing.
 */
class AtomicOutputTest {
    /** The steps of a commit that replaces an output holding {@link #writeNewOutput}'s three files. */
    static final List<String> COMMIT_STEPS = List.of(
            "forceFile NEW/config.json", "forceFile NEW/model.safetensors", "forceFile NEW/sub/notes.txt",
            "forceDir NEW/sub", "forceDir NEW",
            "move OUT -> OLD", "move NEW -> OUT", "forceDir PARENT", "deleteTree OLD");
    static final int MOVE_NEW_INTO_PLACE = COMMIT_STEPS.indexOf("move NEW -> OUT");

    @TempDir
    Path dir;

    /** The new output: two files and a sub-folder with one. */
    static void writeNewOutput(Path d) throws IOException {
        Files.writeString(d.resolve("model.safetensors"), "new weights");
        Files.writeString(d.resolve("config.json"), "{\"new\": true}");
        Files.createDirectories(d.resolve("sub"));
        Files.writeString(d.resolve("sub/notes.txt"), "new notes");
    }

    static void writeOldOutput(Path d) throws IOException {
        Files.createDirectories(d);
        Files.writeString(d.resolve("model.safetensors"), "old weights");
        Files.writeString(d.resolve("config.json"), "{\"old\": true}");
    }

    private Map<String, String> oldTree() throws IOException {
        Path p = Files.createTempDirectory(dir.getParent(), "old");
        writeOldOutput(p);
        return hashTree(p);
    }

    private Map<String, String> newTree() throws IOException {
        Path p = Files.createTempDirectory(dir.getParent(), "new");
        writeNewOutput(p);
        return hashTree(p);
    }

    /** Records the steps, in the names of {@link #COMMIT_STEPS}, and fails step {@code failAt}: an I/O error, or a delete that deletes nothing. */
    static class RecordingOps implements AtomicOutput.FileOps {
        final List<String> steps = new ArrayList<>();
        private final Path out;
        private final int failAt;

        RecordingOps(Path out, int failAt) {
            this.out = out;
            this.failAt = failAt;
        }

        private boolean fails(String step) {
            steps.add(step);
            return steps.size() - 1 == failAt;
        }

        private String name(Path p) {
            if (p.equals(out)) {
                return "OUT";
            }
            if (p.equals(out.getParent())) {
                return "PARENT";
            }
            Path hidden = out.getParent().relativize(p);
            String first = hidden.getName(0).toString();
            String rest = hidden.getNameCount() > 1 ? "/" + hidden.subpath(1, hidden.getNameCount()).toString().replace('\\', '/') : "";
            if (first.contains(AtomicOutput.PARTIAL_MARKER)) {
                return "NEW" + rest;
            }
            if (first.contains(AtomicOutput.OLD_MARKER)) {
                return "OLD" + rest;
            }
            return p.toString();
        }

        @Override
        public void forceFile(Path file) throws IOException {
            if (fails("forceFile " + name(file))) {
                throw new IOException("injected: fsync failed");
            }
            AtomicOutput.SYSTEM.forceFile(file);
        }

        @Override
        public void forceDir(Path d) throws IOException {
            if (fails("forceDir " + name(d))) {
                throw new IOException("injected: fsync failed");
            }
            AtomicOutput.SYSTEM.forceDir(d);
        }

        @Override
        public void move(Path from, Path to) throws IOException {
            if (fails("move " + name(from) + " -> " + name(to))) {
                throw new IOException("injected: rename failed");
            }
            AtomicOutput.SYSTEM.move(from, to);
        }

        @Override
        public void deleteTree(Path d) {
            if (!fails("deleteTree " + name(d))) {
                AtomicOutput.SYSTEM.deleteTree(d);
            }
        }
    }

    @Test
    void commitFsyncsEveryFileAndFolderBeforeTheNewOutputIsRenamedIntoPlace() throws Exception {
        Path out = dir.resolve("out");
        writeOldOutput(out);
        RecordingOps ops = new RecordingOps(out, -1);
        try (AtomicOutput o = AtomicOutput.create(out, true, List.of(), line -> { }, ops)) {
            writeNewOutput(o.dir());
            o.commit();
        }
        // the order matters: data durable, old aside, new in, the renames durable, only then the old deleted
        List<String> sortedFsyncs = ops.steps.subList(0, 3).stream().sorted().toList();
        assertEquals(COMMIT_STEPS.subList(0, 3), sortedFsyncs, "every file fsynced first: " + ops.steps);
        assertEquals(COMMIT_STEPS.subList(3, COMMIT_STEPS.size()), ops.steps.subList(3, ops.steps.size()), "the commit's steps");
        assertEquals(newTree(), hashTree(out));
        assertEquals(List.of("out"), list(dir), "nothing left beside --out");
    }

    /**
     * The real steps, not a recording of them: the file system's fsync reaches every file and folder of
     * the new output and the parent, through the channels AtomicOutput opens (a wrapper counts the
     * force calls on each; the bytes still go to disk).
     */
    @Test
    void theRealCommitFsyncsEveryFileAndFolderOfTheNewOutputAndTheParent() throws Exception {
        Path out = dir.resolve("out");
        writeOldOutput(out);
        List<String> forced = java.util.Collections.synchronizedList(new ArrayList<>());
        AtomicOutput.FileOps real = AtomicOutput.system(path -> new ForceCountingChannel(
                java.nio.channels.FileChannel.open(path, java.nio.file.StandardOpenOption.READ), () -> forced.add(new RecordingOps(out, -1).name(path))));
        try (AtomicOutput o = AtomicOutput.create(out, true, List.of(), line -> { }, real)) {
            writeNewOutput(o.dir());
            o.commit();
        }
        List<String> expected = COMMIT_STEPS.stream().filter(step -> step.startsWith("force"))
                .map(step -> step.substring(step.indexOf(' ') + 1)).sorted().toList();
        assertEquals(expected, forced.stream().sorted().toList(), "fsync (FileChannel.force) on every file, every folder of the output and the parent");
        assertEquals(newTree(), hashTree(out));
    }

    /** A file channel that reports each force() and otherwise is the channel it wraps. */
    private static final class ForceCountingChannel extends java.nio.channels.FileChannel {
        private final java.nio.channels.FileChannel ch;
        private final Runnable onForce;

        ForceCountingChannel(java.nio.channels.FileChannel ch, Runnable onForce) {
            this.ch = ch;
            this.onForce = onForce;
        }

        @Override
        public void force(boolean metaData) throws IOException {
            ch.force(metaData);
            onForce.run();
        }

        @Override
        public int read(java.nio.ByteBuffer dst) throws IOException {
            return ch.read(dst);
        }

        @Override
        public long read(java.nio.ByteBuffer[] dsts, int offset, int length) throws IOException {
            return ch.read(dsts, offset, length);
        }

        @Override
        public int write(java.nio.ByteBuffer src) throws IOException {
            return ch.write(src);
        }

        @Override
        public long write(java.nio.ByteBuffer[] srcs, int offset, int length) throws IOException {
            return ch.write(srcs, offset, length);
        }

        @Override
        public long position() throws IOException {
            return ch.position();
        }

        @Override
        public java.nio.channels.FileChannel position(long newPosition) throws IOException {
            ch.position(newPosition);
            return this;
        }

        @Override
        public long size() throws IOException {
            return ch.size();
        }

        @Override
        public java.nio.channels.FileChannel truncate(long size) throws IOException {
            ch.truncate(size);
            return this;
        }

        @Override
        public long transferTo(long position, long count, java.nio.channels.WritableByteChannel target) throws IOException {
            return ch.transferTo(position, count, target);
        }

        @Override
        public long transferFrom(java.nio.channels.ReadableByteChannel src, long position, long count) throws IOException {
            return ch.transferFrom(src, position, count);
        }

        @Override
        public int read(java.nio.ByteBuffer dst, long position) throws IOException {
            return ch.read(dst, position);
        }

        @Override
        public int write(java.nio.ByteBuffer src, long position) throws IOException {
            return ch.write(src, position);
        }

        @Override
        public java.nio.MappedByteBuffer map(MapMode mode, long position, long size) throws IOException {
            return ch.map(mode, position, size);
        }

        @Override
        public java.nio.channels.FileLock lock(long position, long size, boolean shared) throws IOException {
            return ch.lock(position, size, shared);
        }

        @Override
        public java.nio.channels.FileLock tryLock(long position, long size, boolean shared) throws IOException {
            return ch.tryLock(position, size, shared);
        }

        @Override
        protected void implCloseChannel() throws IOException {
            ch.close();
        }
    }

    @ParameterizedTest(name = "step {0} fails")
    @ValueSource(ints = {0, 1, 2, 3, 4, 5, 6, 7, 8})
    void aFailedStepOfACommitLeavesTheOldOutputOrTheCompleteNewOneAndNothingElse(int failAt) throws Exception {
        Path out = dir.resolve("out");
        writeOldOutput(out);
        RecordingOps ops = new RecordingOps(out, failAt);
        boolean threw = false;
        try (AtomicOutput o = AtomicOutput.create(out, true, List.of(), line -> { }, ops)) {
            writeNewOutput(o.dir());
            try {
                o.commit();
            } catch (IOException e) {
                threw = true;
                assertTrue(e.getMessage().startsWith("injected"), e.toString());
            }
            assertEquals(COMMIT_STEPS.get(failAt), ops.steps.get(failAt), "the step that failed");
        }
        boolean newInPlace = failAt > MOVE_NEW_INTO_PLACE;
        assertEquals(newInPlace ? newTree() : oldTree(), hashTree(out), "after " + COMMIT_STEPS.get(failAt) + " failed");
        assertEquals(!newInPlace || failAt == COMMIT_STEPS.indexOf("forceDir PARENT"), threw,
                "a commit fails when its output is not in place or not known to be durable");
        assertEquals(List.of("out"), list(dir), "nothing left beside --out");
    }

    @ParameterizedTest(name = "step {0} fails, no earlier output")
    @ValueSource(ints = {0, 3, 4, 5, 6})
    void aFailedFirstCommitLeavesNoOutputOrTheCompleteNewOne(int failAt) throws Exception {
        // without an earlier output the steps are the five fsyncs, the rename (5) and the parent's fsync (6)
        Path out = dir.resolve("out");
        RecordingOps ops = new RecordingOps(out, failAt);
        try (AtomicOutput o = AtomicOutput.create(out, false, List.of(), line -> { }, ops)) {
            writeNewOutput(o.dir());
            IOException e = assertThrows(IOException.class, o::commit);
            assertTrue(e.getMessage().startsWith("injected"), e.toString());
        }
        if (failAt <= 5) {
            assertFalse(Files.exists(out), ops.steps.get(failAt) + " failed, yet --out exists");
            assertEquals(List.of(), list(dir), "nothing left beside --out");
        } else {
            assertEquals(newTree(), hashTree(out));
            assertEquals(List.of("out"), list(dir), "nothing left beside --out");
        }
    }

    /**
     * A real process killed (Runtime.halt, which runs no shutdown hook or finally block) just
     * before each step of a commit that replaces an output: right after, --out holds the old or
     * the new output, except between the two renames, where the old one sits aside intact; the
     * next run puts it back and cleans up the rest.
     */
    @ParameterizedTest(name = "killed before step {0}")
    @ValueSource(ints = {-1, 0, 3, 5, 6, 7, 8})
    void aMergeKilledDuringItsCommitLeavesTheOldOrTheNewOutputOnceTheNextRunHasCleanedUp(int haltAt) throws Exception {
        Path out = dir.resolve("out");
        writeOldOutput(out);
        Process child = child("halt-at", Integer.toString(haltAt), out.toString());
        String childOutput = new String(child.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(child.waitFor(60, TimeUnit.SECONDS));
        assertEquals(3, child.exitValue(), "the child should have halted:\n" + childOutput);

        boolean newInPlace = haltAt > MOVE_NEW_INTO_PLACE;
        List<String> aside = list(dir).stream().filter(n -> n.startsWith(".out" + AtomicOutput.OLD_MARKER)).toList();
        if (haltAt == MOVE_NEW_INTO_PLACE) {
            // the one window POSIX leaves: the old output has been renamed aside, the new not yet into place
            assertFalse(Files.exists(out));
            assertEquals(1, aside.size(), list(dir).toString());
            assertEquals(oldTree(), hashTree(dir.resolve(aside.get(0))), "the old output is intact while aside");
        } else {
            assertEquals(newInPlace ? newTree() : oldTree(), hashTree(out), "right after the kill");
        }

        List<String> log = new ArrayList<>();
        try (AtomicOutput next = AtomicOutput.create(out, true, List.of(), log::add)) {
            assertEquals(newInPlace ? newTree() : oldTree(), hashTree(out), "once the next run has cleaned up; it said " + log);
        }
        assertEquals(List.of("out"), list(dir), "the next run left nothing of the killed one beside --out; it said " + log);
        String said = String.join("\n", log);
        if (haltAt >= 0 && haltAt <= MOVE_NEW_INTO_PLACE || haltAt == -1) {
            assertTrue(said.contains("removed") && said.contains(AtomicOutput.PARTIAL_MARKER) && said.contains("no longer running"), said);
        }
        if (haltAt == MOVE_NEW_INTO_PLACE) {
            assertTrue(said.contains("restored " + out), said);
        }
        if (newInPlace) {
            assertTrue(said.contains("removed") && said.contains(AtomicOutput.OLD_MARKER), said);
        }
    }

    @Test
    void aLiveMergesFoldersAreLeftAloneAndAKilledOnesAreRemovedWithAMessage() throws Exception {
        Path a = dir.resolve("a");
        Process holder = child("hold", a.toString());
        try {
            BufferedReader r = new BufferedReader(new InputStreamReader(holder.getInputStream(), StandardCharsets.UTF_8));
            String line = r.readLine();
            assertEquals("READY", line, "the holding process did not start");
            Path partial = only(AtomicOutput.PARTIAL_MARKER);
            Path record = only(AtomicOutput.LOCK_MARKER);

            List<String> log = new ArrayList<>();
            try (AtomicOutput b = AtomicOutput.create(dir.resolve("b"), false, List.of(), log::add)) {
                assertTrue(Files.isRegularFile(partial.resolve("model.safetensors")), "a live merge's folder was touched");
                assertTrue(Files.exists(record));
            }
            assertEquals(List.of(), log, "nothing to say about a live merge");

            holder.destroyForcibly(); // SIGKILL
            assertTrue(holder.waitFor(60, TimeUnit.SECONDS));
            assertTrue(Files.exists(partial), "a killed process cleans up nothing");

            try (AtomicOutput b = AtomicOutput.create(dir.resolve("b"), false, List.of(), log::add)) {
                assertFalse(Files.exists(partial), "the killed merge's folder is still there");
            }
            assertEquals(1, log.size(), log.toString());
            assertTrue(log.get(0).contains("removed " + partial) && log.get(0).contains("process " + holder.pid()), log.get(0));
            assertEquals(List.of(), list(dir), "no folder or owner record of the killed merge is left");
        } finally {
            holder.destroyForcibly();
        }
    }

    @Test
    void aCleanerInTheSameProcessKeepsTheLockOfItsOwnUnfinishedOutputs() throws Exception {
        // closing any descriptor of a locked file drops the process's POSIX locks on it: the cleaner must not open its own records
        try (AtomicOutput a = AtomicOutput.create(dir.resolve("a"), false, List.of(), line -> { })) {
            Files.writeString(a.dir().resolve("model.safetensors"), "being written");
            try (AtomicOutput b = AtomicOutput.create(dir.resolve("b"), false, List.of(), line -> { })) {
                assertTrue(Files.exists(a.dir()));
            }
            Process cleaner = child("clean", dir.resolve("c").toString());
            String said = new String(cleaner.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
            assertTrue(cleaner.waitFor(60, TimeUnit.SECONDS));
            assertEquals(0, cleaner.exitValue(), said);
            assertTrue(Files.isRegularFile(a.dir().resolve("model.safetensors")), "another process took a live output for dead:\n" + said);
            a.commit();
        }
        assertEquals("being written", Files.readString(dir.resolve("a/model.safetensors")));
    }

    @Test
    void aCommitRefusesAnOutputThatAppearedWhileMergingWithoutOverwrite() throws Exception {
        Path out = dir.resolve("out");
        try (AtomicOutput o = AtomicOutput.create(out, false, List.of(), line -> { })) {
            writeNewOutput(o.dir());
            writeOldOutput(out); // someone else wrote --out meanwhile
            assertThrows(java.nio.file.FileAlreadyExistsException.class, o::commit);
        }
        assertEquals(oldTree(), hashTree(out));
        assertEquals(List.of("out"), list(dir));
    }

    @Test
    void hiddenFolderNamesOfA240CharacterOutStayWithin255Bytes() throws Exception {
        Path out = dir.resolve("m".repeat(240));
        writeOldOutput(out);
        try (AtomicOutput o = AtomicOutput.create(out, true, List.of(), line -> { }, namesWithin255Bytes(out))) {
            writeNewOutput(o.dir());
            o.commit();
        }
        assertEquals(newTree(), hashTree(out));
        assertEquals(List.of(out.getFileName().toString()), list(dir));
    }

    @Test
    void hiddenNamesOfTwoLongOutNamesWithACommonBeginningStayDistinct() throws Exception {
        // 85 three-byte characters: a 255-byte name, the longest legal one
        String common = "\u8a9e".repeat(84);
        Path a = dir.resolve(common + "a");
        Path b = dir.resolve(common + "b");
        try (AtomicOutput oa = AtomicOutput.create(a, false, List.of(), line -> { });
             AtomicOutput ob = AtomicOutput.create(b, false, List.of(), line -> { })) {
            for (String n : list(dir)) {
                assertTrue(n.getBytes(StandardCharsets.UTF_8).length <= 255, n.getBytes(StandardCharsets.UTF_8).length + " bytes: " + n);
            }
            assertFalse(oa.dir().equals(ob.dir()));
            Files.writeString(oa.dir().resolve("x"), "a");
            Files.writeString(ob.dir().resolve("x"), "b");
            oa.commit();
            ob.commit();
        }
        assertEquals("a", Files.readString(a.resolve("x")));
        assertEquals("b", Files.readString(b.resolve("x")));
        assertEquals(2, list(dir).size(), list(dir).toString());
    }

    @Test
    void mergeIntoA240CharacterOutSucceeds() throws Exception {
        Path base = TinyModels.writeTinyLlama(dir.resolve("base"));
        Path adapter = TinyModels.writeQProjAdapter(dir.resolve("adapter"));
        Path out = dir.resolve("o".repeat(240));
        int code = Main.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", out.toString(),
                "--device", "cpu", "--quiet");
        assertEquals(ExitCodes.OK, code);
        assertTrue(Files.isRegularFile(out.resolve("model.safetensors")));
        assertEquals(List.of("adapter", "base", out.getFileName().toString()), list(dir));
    }

    /** The real file system, checking that every name the commit creates fits in 255 bytes. */
    private static AtomicOutput.FileOps namesWithin255Bytes(Path out) {
        return new RecordingOps(out, -1) {
            @Override
            public void move(Path from, Path to) throws IOException {
                for (Path p : List.of(from, to)) {
                    int bytes = p.getFileName().toString().getBytes(StandardCharsets.UTF_8).length;
                    if (bytes > 255) {
                        fail(bytes + "-byte name " + p.getFileName());
                    }
                }
                super.move(from, to);
            }
        };
    }

    private Path only(String marker) throws IOException {
        List<String> names = list(dir).stream().filter(n -> n.contains(marker)).toList();
        assertEquals(1, names.size(), list(dir).toString());
        return dir.resolve(names.get(0));
    }

    private static Process child(String... args) throws IOException {
        List<String> cmd = new ArrayList<>(List.of(Paths.get(System.getProperty("java.home"), "bin", "java").toString(),
                "-cp", System.getProperty("java.class.path"), AtomicOutputChild.class.getName()));
        cmd.addAll(List.of(args));
        return new ProcessBuilder(cmd).redirectErrorStream(true).start();
    }
}
