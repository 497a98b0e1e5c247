package org.loramerge.spark;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.api.Test;

/**
 * The commit protocol on its own, with attempts as threads: on a local disk (RENAME) and on a
 * store without rename (MARKER, {@link ObjectStoreFileSystem}).
 */
class OutputCommitTest {
    @TempDir
    Path tmp;

    private static Configuration conf() {
        Configuration c = new Configuration(false);
        c.set("fs.objstore.impl", ObjectStoreFileSystem.class.getName());
        c.setBoolean("fs.objstore.impl.disable.cache", true);
        return c;
    }

    /** The output's location for the mode: a local path for RENAME, the object store for MARKER. */
    private org.apache.hadoop.fs.Path out(OutputCommit.Mode mode) {
        Path local = tmp.resolve("dest").resolve("merged");
        return new org.apache.hadoop.fs.Path(mode == OutputCommit.Mode.RENAME ? local.toUri().toString() : ObjectStoreFileSystem.location(local));
    }

    private OutputCommit commit(OutputCommit.Mode mode, Duration claimTimeout, OutputCommit.Hook hook) throws IOException {
        return new OutputCommit(conf(), out(mode), mode, claimTimeout, hook);
    }

    /** A merge of an attempt: three files whose bytes name the attempt. */
    private Path merged(String attempt) throws IOException {
        Path dir = tmp.resolve("work-" + attempt).resolve("merged");
        Files.createDirectories(dir.resolve("sub"));
        Files.writeString(dir.resolve("config.json"), "{\"attempt\": \"" + attempt + "\"}");
        Files.write(dir.resolve("model.safetensors"), ("weights of " + attempt).repeat(1000).getBytes(StandardCharsets.UTF_8));
        Files.writeString(dir.resolve("sub/extra.txt"), "extra " + attempt);
        return dir;
    }

    private static Map<String, String> contents(Path dir) throws IOException {
        Map<String, String> m = new TreeMap<>();
        try (Stream<Path> walk = Files.walk(dir)) {
            for (Path p : (Iterable<Path>) walk.filter(Files::isRegularFile)::iterator) {
                m.put(dir.relativize(p).toString(), Files.readString(p, StandardCharsets.ISO_8859_1));
            }
        }
        return m;
    }

    /** Everything in the destination folder but the output: attempt folders, claims, partial files. */
    private List<String> leftovers() throws IOException {
        List<String> names = new ArrayList<>();
        try (Stream<Path> s = Files.list(tmp.resolve("dest"))) {
            s.map(p -> p.getFileName().toString()).filter(n -> !n.equals("merged")).forEach(names::add);
        }
        return names;
    }

    @ParameterizedTest
    @EnumSource(OutputCommit.Mode.class)
    void twoAttemptsCommittingAtOnceLeaveExactlyOneAttemptsBytesAndNothingElse(OutputCommit.Mode mode) throws Exception {
        int attempts = 4;
        List<Path> merges = new ArrayList<>();
        for (int i = 0; i < attempts; i++) {
            merges.add(merged("a" + i));
        }
        CyclicBarrier start = new CyclicBarrier(attempts);
        ExecutorService pool = Executors.newFixedThreadPool(attempts);
        List<Future<OutputCommit.Result>> results = new ArrayList<>();
        for (int i = 0; i < attempts; i++) {
            Path m = merges.get(i);
            String attempt = "a" + i;
            results.add(pool.submit(() -> {
                OutputCommit c = commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE);
                CompletionMarker marker = CompletionMarker.of(m, 1, attempt);
                start.await();
                return c.commit(m, marker, attempt);
            }));
        }
        pool.shutdown();
        int won = -1;
        for (int i = 0; i < attempts; i++) {
            OutputCommit.Result r = results.get(i).get();
            if (r.outcome() == OutputCommit.Outcome.COMMITTED) {
                assertEquals(-1, won, "two attempts committed");
                won = i;
            }
        }
        assertTrue(won >= 0, "no attempt committed");
        for (int i = 0; i < attempts; i++) {
            assertEquals("a" + won, results.get(i).get().marker().attempt(), "every attempt reports the winner's record");
        }
        Path out = tmp.resolve("dest/merged");
        Map<String, String> files = contents(out);
        files.remove(CompletionMarker.NAME);
        assertEquals(contents(merges.get(won)), files, "the output is the winner's bytes, whole");
        assertEquals(List.of(), leftovers(), "losers leave nothing beside the output");
        assertNotNull(commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE).committed());
    }

    @ParameterizedTest
    @EnumSource(OutputCommit.Mode.class)
    void anAttemptFailingMidUploadLeavesNoOutputAndNoAttemptFiles(OutputCommit.Mode mode) throws Exception {
        Path m = merged("a0");
        OutputCommit failing = commit(mode, Duration.ofMinutes(5), files -> {
            if (files == 2) {
                throw new IOException("injected: the store went away");
            }
        });
        assertThrows(IOException.class, () -> failing.commit(m, CompletionMarker.of(m, 1, "a0"), "a0"));
        failing.discard("a0");
        assertFalse(Files.exists(tmp.resolve("dest/merged")), "no output, not even a partial one");
        assertEquals(List.of(), leftovers());

        Path retry = merged("a1");
        OutputCommit.Result r = commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE).commit(retry, CompletionMarker.of(retry, 1, "a1"), "a1");
        assertEquals(OutputCommit.Outcome.COMMITTED, r.outcome(), "the retry commits");
        Map<String, String> files = contents(tmp.resolve("dest/merged"));
        files.remove(CompletionMarker.NAME);
        assertEquals(contents(retry), files);
        assertEquals(List.of(), leftovers());
    }

    @Test
    void onAnObjectStoreAStaleClaimOfADeadWriterIsTakenOverAndItsPartialFilesReplaced() throws Exception {
        Path dest = tmp.resolve("dest");
        Path partial = dest.resolve("merged");
        Files.createDirectories(partial);
        Files.writeString(partial.resolve(CompletionMarker.WRITING), "a0");
        Files.writeString(partial.resolve("model.safetensors"), "half of a dead writer's shard");
        Path claim = dest.resolve(OutputCommit.CLAIM_PREFIX + "merged");
        Files.writeString(claim, "a0");
        Files.setLastModifiedTime(claim, FileTime.fromMillis(System.currentTimeMillis() - 60_000));

        Path m = merged("a1");
        OutputCommit.Result r = commit(OutputCommit.Mode.MARKER, Duration.ofSeconds(5), OutputCommit.Hook.NONE)
                .commit(m, CompletionMarker.of(m, 1, "a1"), "a1");
        assertEquals(OutputCommit.Outcome.COMMITTED, r.outcome());
        Map<String, String> files = contents(partial);
        files.remove(CompletionMarker.NAME);
        assertEquals(contents(m), files, "the dead writer's file is replaced, none of it left");
        assertEquals(List.of(), leftovers(), "the claim is gone");
    }

    @Test
    void onAnObjectStoreAStaleClaimDoesNotLetAFolderWithoutAWritersMarkBeDeleted() throws Exception {
        Path dest = tmp.resolve("dest");
        Path theirs = dest.resolve("merged");
        Files.createDirectories(theirs);
        Files.writeString(theirs.resolve("notes.txt"), "someone's work");
        Path claim = dest.resolve(OutputCommit.CLAIM_PREFIX + "merged");
        Files.writeString(claim, "a0");
        Files.setLastModifiedTime(claim, FileTime.fromMillis(System.currentTimeMillis() - 60_000));

        Path m = merged("a1");
        CommitException e = assertThrows(CommitException.class, () -> commit(OutputCommit.Mode.MARKER, Duration.ofSeconds(5), OutputCommit.Hook.NONE)
                .commit(m, CompletionMarker.of(m, 1, "a1"), "a1"));
        assertTrue(e.getMessage().contains("was not written by this job"), e.getMessage());
        assertEquals(Map.of("notes.txt", "someone's work"), contents(theirs), "a folder no attempt marked as its own is kept");
        assertEquals(List.of(), leftovers(), "the claim taken over is released");
    }

    @Test
    void onAnObjectStoreAClaimRefreshedJustAfterItLookedStaleIsNotTakenOver() throws Exception {
        Path claim = tmp.resolve("dest").resolve(OutputCommit.CLAIM_PREFIX + "merged");
        Files.createDirectories(claim.getParent());
        Files.writeString(claim, "a0");
        Files.setLastModifiedTime(claim, FileTime.fromMillis(System.currentTimeMillis() - 60_000));
        // a0 refreshes its claim as the waiter reads it for the first time: the waiter's look at its age is out of date
        java.util.concurrent.atomic.AtomicBoolean refreshed = new java.util.concurrent.atomic.AtomicBoolean();
        ObjectStoreFileSystem.beforeOpen = f -> {
            if (f.getName().equals(claim.getFileName().toString()) && refreshed.compareAndSet(false, true)) {
                try {
                    Files.setLastModifiedTime(claim, FileTime.fromMillis(System.currentTimeMillis()));
                } catch (IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            }
        };
        Path m = merged("a1");
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try {
            Future<OutputCommit.Result> waiter = pool.submit(() -> commit(OutputCommit.Mode.MARKER, Duration.ofSeconds(30), OutputCommit.Hook.NONE)
                    .commit(m, CompletionMarker.of(m, 1, "a1"), "a1"));
            for (int i = 0; i < 200 && !refreshed.get(); i++) {
                Thread.sleep(50);
            }
            assertTrue(refreshed.get(), "the waiter read the claim");
            Thread.sleep(500);
            assertFalse(waiter.isDone(), "the waiter still waits for a0");
            assertEquals("a0", Files.readString(claim), "a0 keeps its claim");
            // a0 gives up its claim: the waiter takes it and commits
            Files.delete(claim);
            assertEquals(OutputCommit.Outcome.COMMITTED, waiter.get().outcome());
        } finally {
            ObjectStoreFileSystem.beforeOpen = null;
            pool.shutdownNow();
        }
    }

    @Test
    void onAnObjectStoreAnOutputCommittedJustBeforeThisAttemptTookTheClaimIsReportedAsCommittedByAnother() throws Exception {
        Path m0 = merged("a0");
        CompletionMarker first = CompletionMarker.of(m0, 1, "a0");
        Path out = tmp.resolve("dest/merged");
        // a0 committed and released its claim between a1's look at the output and a1's create of the claim
        OutputCommit.Hook commitsMeanwhile = new OutputCommit.Hook() {
            @Override
            public void uploaded(int files) {
            }

            @Override
            public void claimed() throws IOException {
                try (Stream<Path> walk = Files.walk(m0)) {
                    for (Path p : (Iterable<Path>) walk.filter(Files::isRegularFile)::iterator) {
                        Path target = out.resolve(m0.relativize(p).toString());
                        Files.createDirectories(target.getParent());
                        Files.copy(p, target);
                    }
                }
                Files.write(out.resolve(CompletionMarker.NAME), com.fasterxml.jackson.databind.json.JsonMapper.builder()
                        .propertyNamingStrategy(com.fasterxml.jackson.databind.PropertyNamingStrategies.SNAKE_CASE).build().writeValueAsBytes(first));
            }
        };
        Path m1 = merged("a1");
        OutputCommit.Result r = commit(OutputCommit.Mode.MARKER, Duration.ofMinutes(5), commitsMeanwhile).commit(m1, CompletionMarker.of(m1, 1, "a1"), "a1");
        assertEquals(OutputCommit.Outcome.COMMITTED_BY_ANOTHER, r.outcome());
        assertEquals("a0", r.marker().attempt());
        Map<String, String> files = contents(out);
        files.remove(CompletionMarker.NAME);
        assertEquals(contents(m0), files, "a0's output is kept");
        assertEquals(List.of(), leftovers(), "a1 releases the claim it took");
    }

    @Test
    void onAnObjectStoreAHolderWhoseClaimWasTakenOverStopsWithoutItsRecordAndLeavesTheOutputToTheTaker() throws Exception {
        Path claim = tmp.resolve("dest").resolve(OutputCommit.CLAIM_PREFIX + "merged");
        // while a0 uploads, its claim is taken over by a9 (a0 looked dead to it)
        OutputCommit overtaken = commit(OutputCommit.Mode.MARKER, Duration.ofMinutes(5), files -> {
            if (files == 1) {
                Files.writeString(claim, "a9");
            }
        });
        Path m = merged("a0");
        IOException e = assertThrows(IOException.class, () -> overtaken.commit(m, CompletionMarker.of(m, 1, "a0"), "a0"));
        assertTrue(e.getMessage().contains("lost its claim"), e.getMessage());
        assertFalse(Files.exists(tmp.resolve("dest/merged").resolve(CompletionMarker.NAME)), "no completion record");
        assertEquals("a9", Files.readString(claim), "the taker's claim is left to it");
    }

    @Test
    void onAnObjectStoreAHolderWhoseRefreshesFailForHalfTheClaimTimeoutStopsWithoutItsRecord() throws Exception {
        Path claim = tmp.resolve("dest").resolve(OutputCommit.CLAIM_PREFIX + "merged");
        // the claim cannot be rewritten while a0 uploads slowly
        OutputCommit cutOff = commit(OutputCommit.Mode.MARKER, Duration.ofMillis(400), files -> {
            if (files == 1) {
                ObjectStoreFileSystem.unwritable = claim.getFileName().toString();
                try {
                    Thread.sleep(600);
                } catch (InterruptedException x) {
                    throw new IOException(x);
                }
            }
        });
        Path m = merged("a0");
        IOException e;
        try {
            e = assertThrows(IOException.class, () -> cutOff.commit(m, CompletionMarker.of(m, 1, "a0"), "a0"));
        } finally {
            ObjectStoreFileSystem.unwritable = null;
        }
        assertTrue(e.getMessage().contains("refreshing it failed"), e.getMessage());
        assertFalse(Files.exists(tmp.resolve("dest/merged").resolve(CompletionMarker.NAME)), "no completion record");
    }

    @Test
    void onAnObjectStoreALiveClaimIsWaitedForAndItsHoldersOutputReported() throws Exception {
        Path m0 = merged("a0");
        Path m1 = merged("a1");
        CyclicBarrier uploading = new CyclicBarrier(2);
        // a0 holds the claim and pauses in its upload until a1 has started waiting
        OutputCommit slow = commit(OutputCommit.Mode.MARKER, Duration.ofMinutes(5), files -> {
            if (files == 1) {
                try {
                    uploading.await();
                    Thread.sleep(300);
                } catch (Exception e) {
                    throw new IOException(e);
                }
            }
        });
        ExecutorService pool = Executors.newSingleThreadExecutor();
        Future<OutputCommit.Result> first = pool.submit(() -> slow.commit(m0, CompletionMarker.of(m0, 1, "a0"), "a0"));
        uploading.await();
        OutputCommit.Result second = commit(OutputCommit.Mode.MARKER, Duration.ofMinutes(5), OutputCommit.Hook.NONE)
                .commit(m1, CompletionMarker.of(m1, 1, "a1"), "a1");
        pool.shutdown();
        assertEquals(OutputCommit.Outcome.COMMITTED, first.get().outcome());
        assertEquals(OutputCommit.Outcome.COMMITTED_BY_ANOTHER, second.outcome());
        assertEquals("a0", second.marker().attempt());
        Map<String, String> files = contents(tmp.resolve("dest/merged"));
        files.remove(CompletionMarker.NAME);
        assertEquals(contents(m0), files);
        assertEquals(List.of(), leftovers());
    }

    @ParameterizedTest
    @EnumSource(OutputCommit.Mode.class)
    void anOutputChangedAfterItsCommitIsNotTakenForCommitted(OutputCommit.Mode mode) throws Exception {
        Path m = merged("a0");
        commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE).commit(m, CompletionMarker.of(m, 1, "a0"), "a0");
        Path shard = tmp.resolve("dest/merged/model.safetensors");
        byte[] bytes = Files.readAllBytes(shard);
        bytes[10] ^= 1;
        Files.write(shard, bytes);
        CommitException e = assertThrows(CommitException.class, () -> commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE).committed());
        assertTrue(e.getMessage().contains("model.safetensors differs"), e.getMessage());
        assertTrue(e.getMessage().contains("delete the folder"), e.getMessage());
    }

    @ParameterizedTest
    @EnumSource(OutputCommit.Mode.class)
    void aFolderThatThisJobDidNotWriteIsNeverReplaced(OutputCommit.Mode mode) throws Exception {
        Path theirs = tmp.resolve("dest/merged");
        Files.createDirectories(theirs);
        Files.writeString(theirs.resolve("notes.txt"), "someone's work");
        OutputCommit c = commit(mode, Duration.ofMinutes(5), OutputCommit.Hook.NONE);
        assertNull(c.committed());
        Path m = merged("a0");
        CommitException e = assertThrows(CommitException.class, () -> c.commit(m, CompletionMarker.of(m, 1, "a0"), "a0"));
        assertTrue(e.getMessage().contains("was not written by this job"), e.getMessage());
        assertEquals(Map.of("notes.txt", "someone's work"), contents(theirs));
        assertEquals(List.of(), leftovers());
    }

    @Test
    void aCommitDeletesDeadAttemptsOfItsOwnOutputButNotThoseOfAnOutputWhoseNameStartsAlike() throws Exception {
        Path dest = tmp.resolve("dest");
        Path dead = dest.resolve(OutputCommit.ATTEMPT_PREFIX + "merged-a0-0badf00d");
        Path deadEngine = dest.resolve("." + OutputCommit.ATTEMPT_PREFIX + "merged-a0-0badf00d.loramerge-partial-12345678");
        Path sibling = dest.resolve(OutputCommit.ATTEMPT_PREFIX + "merged-2-a0-1234abcd");
        for (Path p : List.of(dead, deadEngine, sibling)) {
            Files.createDirectories(p);
            Files.writeString(p.resolve("model.safetensors"), "half");
        }
        Path m = merged("a1");
        String attempt = OutputCommit.newAttemptId(1);
        commit(OutputCommit.Mode.RENAME, Duration.ofMinutes(5), OutputCommit.Hook.NONE).commit(m, CompletionMarker.of(m, 1, attempt), attempt);
        assertEquals(List.of(sibling.getFileName().toString()), leftovers(), "the dead attempts of merged are gone; merged-2's is untouched");
    }

    @Test
    void theRecordsChecksumIsTheSha256OfTheSha256sumListing() throws Exception {
        Path dir = tmp.resolve("two");
        Files.createDirectories(dir);
        Files.writeString(dir.resolve("b.txt"), "b");
        Files.writeString(dir.resolve("a.txt"), "a");
        CompletionMarker m = CompletionMarker.of(dir, 3, "x");
        // sha256sum a.txt b.txt | sha256sum
        String listing = "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb  a.txt\n"
                + "3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d  b.txt\n";
        assertEquals(CompletionMarker.sha256(new java.io.ByteArrayInputStream(listing.getBytes(StandardCharsets.UTF_8))), m.checksum());
        assertEquals(2, m.bytes());
        assertArrayEquals(new String[] {"a.txt", "b.txt"}, m.files().stream().map(CompletionMarker.FileEntry::name).toArray());
    }
}
