package org.loramerge.spark;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryNotEmptyException;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileContext;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Options;
import org.apache.hadoop.fs.Path;

/**
 * Puts one merged model at its destination so that it is complete or absent, on every store,
 * however many attempts of its line run at once, wherever one of them dies. README.md, "On a
 * Spark cluster", states the protocol; in short:
 *
 * <ul>
 * <li>{@link Mode#RENAME} (local disks, HDFS: folders rename atomically): each attempt uploads into
 * its own folder {@code .loramerge-attempt-NAME-ATTEMPT} beside the output, writes the
 * {@link CompletionMarker} there last, and renames the folder onto the output with a rename that
 * fails when the output exists. One rename wins; a loser deletes its folder. A dead attempt leaves
 * only its own folder, which the next attempt to finish deletes.
 * <li>{@link Mode#MARKER} (object stores: no rename, a "folder" is a key prefix): an attempt first
 * creates the claim {@code .loramerge-claim-NAME} beside the output, a create that fails when the
 * claim exists; the holder alone writes under the output's prefix ({@value CompletionMarker#WRITING}
 * first), refreshes the claim while it uploads, writes the marker last and deletes the claim.
 * Another attempt waits until the marker
 * appears (then the output is done) or the claim goes stale, unrefreshed for the claim timeout (its
 * holder died: the waiter takes the claim over, clears the dead holder's files and writes its own).
 * </ul>
 *
 * An output is complete exactly when its marker is there and its files match it; a re-run skips
 * such an output when the marker names the line's id and inputs ({@link LineTask}), and fails the
 * line otherwise. An existing output without a marker (and, on object stores, without a stale
 * claim that explains it) is not this job's and is never deleted: the line fails and says so.
 */
final class OutputCommit {
    static final String ATTEMPT_PREFIX = ".loramerge-attempt-";
    static final String CLAIM_PREFIX = ".loramerge-claim-";
    /** An attempt's id: its Spark attempt number and 8 random hex digits ({@link #newAttemptId}). */
    static final String ATTEMPT_ID = "a[0-9]+-[0-9a-f]{8}";

    /** How an output is made to appear whole. */
    enum Mode {
        RENAME, MARKER;

        /** RENAME where folders rename atomically (file, hdfs, viewfs), MARKER elsewhere. */
        static Mode forScheme(String scheme) {
            return switch (scheme.toLowerCase(Locale.ROOT)) {
                case "file", "hdfs", "viewfs" -> RENAME;
                default -> MARKER;
            };
        }

        /** auto, rename or marker. */
        static Mode parse(String s, String scheme) {
            return switch (s.toLowerCase(Locale.ROOT)) {
                case "auto" -> forScheme(scheme);
                case "rename" -> RENAME;
                case "marker" -> MARKER;
                default -> throw new IllegalArgumentException("--commit " + s + ": expected auto, rename or marker");
            };
        }
    }

    /** What a commit found or did. */
    enum Outcome {
        /** this attempt's files are the output */
        COMMITTED,
        /** another attempt's files are the output; this attempt's are gone */
        COMMITTED_BY_ANOTHER
    }

    /** The outcome and the marker of the files now at the output. */
    record Result(Outcome outcome, CompletionMarker marker) {
    }

    /** Failures injected by tests between the steps of a commit; {@link #NONE} in a real job. */
    interface Hook {
        /** Called after each file an attempt has put at the destination (uploaded, or written there by the engine), with how many so far. */
        void uploaded(int files) throws IOException;

        /** Called when an attempt has just created the claim (MARKER), before it looks at the output again. */
        default void claimed() throws IOException {
        }

        Hook NONE = files -> {
        };
    }

    private final Configuration conf;
    private final FileSystem fs;
    private final Path out;
    private final Path parent;
    private final String name;
    private final Mode mode;
    private final Duration claimTimeout;
    private final Hook hook;

    /** The commit of the output at the qualified path {@code out}. */
    OutputCommit(Configuration conf, Path out, Mode mode, Duration claimTimeout, Hook hook) throws IOException {
        if (out.getParent() == null) {
            throw new IllegalArgumentException(out + ": an output cannot be a store's root");
        }
        this.conf = conf;
        this.fs = Stores.of(out, conf);
        this.out = out;
        this.parent = out.getParent();
        this.name = out.getName();
        this.mode = mode;
        this.claimTimeout = claimTimeout;
        this.hook = hook;
    }

    /** A new attempt id for Spark attempt number {@code attemptNumber}. */
    static String newAttemptId(int attemptNumber) {
        return "a" + attemptNumber + "-" + String.format("%08x", new java.security.SecureRandom().nextInt());
    }

    Mode mode() {
        return mode;
    }

    /**
     * The marker of the output when it is complete, or null when there is no marker. An output
     * whose files differ from its marker is an error: it was changed after it was written.
     */
    CompletionMarker committed() throws IOException {
        CompletionMarker m = CompletionMarker.read(fs, out);
        if (m == null) {
            return null;
        }
        String mismatch = m.mismatch(fs, out);
        if (mismatch != null) {
            throw new CommitException(out + " has a completion record (" + CompletionMarker.NAME + ") but " + mismatch
                    + ": the output was changed after it was written; delete the folder to merge it again");
        }
        return m;
    }

    /** This attempt's own folder beside the output (RENAME). */
    Path attemptFolder(String attempt) {
        return new Path(parent, ATTEMPT_PREFIX + name + "-" + attempt);
    }

    /**
     * Where the engine writes this attempt's merge: on a local destination with RENAME, the
     * attempt folder itself (no copy); otherwise a folder under {@code workDir}.
     */
    java.nio.file.Path engineFolder(java.nio.file.Path workDir, String attempt) throws IOException {
        if (mode == Mode.RENAME && Stores.isLocal(out)) {
            fs.mkdirs(parent);
            return Stores.localFile(attemptFolder(attempt));
        }
        return workDir.resolve(attempt).resolve(name);
    }

    /** Deletes what this attempt may have left at the destination (its folder, with RENAME); nothing when it committed. */
    void discard(String attempt) throws IOException {
        if (mode == Mode.RENAME) {
            fs.delete(attemptFolder(attempt), true);
        }
    }

    /**
     * Makes the merge in the local folder {@code merged} the output, with {@code marker} (made
     * from {@code merged}) as its completion record, unless another attempt's merge gets there
     * first. Either way this attempt leaves nothing of its own behind at the destination.
     */
    Result commit(java.nio.file.Path merged, CompletionMarker marker, String attempt) throws IOException, InterruptedException {
        return mode == Mode.RENAME ? renameCommit(merged, marker, attempt) : markerCommit(merged, marker, attempt);
    }

    private Result renameCommit(java.nio.file.Path merged, CompletionMarker marker, String attempt) throws IOException {
        Path mine = attemptFolder(attempt);
        boolean won = false;
        try {
            fs.mkdirs(parent);
            if (!Stores.isLocal(out) || !merged.equals(Stores.localFile(mine))) {
                upload(merged, mine);
            } else {
                // the engine wrote into the attempt folder: its files are at the destination already
                for (int n = 1; n <= marker.files().size(); n++) {
                    hook.uploaded(n);
                }
            }
            marker.write(fs, mine);
            won = renameIfAbsent(mine, out);
        } catch (IOException e) {
            // the attempt that committed first deletes the other attempts' folders, perhaps this one's as it was written
            CompletionMarker winner = CompletionMarker.read(fs, out) == null ? null : committed();
            if (winner == null) {
                throw e;
            }
            fs.delete(mine, true);
            return new Result(Outcome.COMMITTED_BY_ANOTHER, winner);
        } finally {
            if (!won) {
                fs.delete(mine, true);
            }
        }
        sweepAttempts();
        if (won) {
            return new Result(Outcome.COMMITTED, marker);
        }
        CompletionMarker winner = committed();
        if (winner == null) {
            throw new CommitException(out + " exists and has no completion record (" + CompletionMarker.NAME
                    + "): it was not written by this job; delete it or choose another out");
        }
        return new Result(Outcome.COMMITTED_BY_ANOTHER, winner);
    }

    /** Renames folder {@code from} to {@code to}, atomically, unless {@code to} exists; false when it does. */
    private boolean renameIfAbsent(Path from, Path to) throws IOException {
        if (Stores.isLocal(to)) {
            // rename(2): fails with ENOTEMPTY when the target is a non-empty folder (an output always holds its marker)
            try {
                Files.move(Stores.localFile(from), Stores.localFile(to), StandardCopyOption.ATOMIC_MOVE);
                return true;
            } catch (FileAlreadyExistsException | DirectoryNotEmptyException e) {
                return false;
            } catch (IOException e) {
                // Java reports ENOTEMPTY as a plain FileSystemException
                if (Files.exists(Stores.localFile(to))) {
                    return false;
                }
                throw e;
            }
        }
        // FileContext's rename without OVERWRITE fails when the target exists; HDFS does the check and the rename in one NameNode operation
        try {
            FileContext.getFileContext(to.toUri(), conf).rename(from, to, Options.Rename.NONE);
            return true;
        } catch (org.apache.hadoop.fs.FileAlreadyExistsException e) {
            return false;
        }
    }

    /** Deletes the folders of other attempts at this output that died before cleaning up (and the engine's own leftovers of them). */
    private void sweepAttempts() throws IOException {
        FileStatus[] siblings;
        try {
            siblings = fs.listStatus(parent);
        } catch (FileNotFoundException e) {
            return;
        }
        // this output's attempts only: "tiny" must not take "tiny-2"'s, whose folders start alike
        Pattern own = Pattern.compile("\\.?" + Pattern.quote(ATTEMPT_PREFIX + name + "-") + ATTEMPT_ID + "(\\.loramerge-.*)?");
        for (FileStatus s : siblings) {
            if (own.matcher(s.getPath().getName()).matches()) {
                fs.delete(s.getPath(), true);
            }
        }
    }

    private Result markerCommit(java.nio.file.Path merged, CompletionMarker marker, String attempt) throws IOException, InterruptedException {
        Path claim = new Path(parent, CLAIM_PREFIX + name);
        boolean tookOver = false;
        while (true) {
            CompletionMarker done = committed();
            if (done != null) {
                return new Result(Outcome.COMMITTED_BY_ANOTHER, done);
            }
            if (createIfAbsent(claim, attempt)) {
                break;
            }
            FileStatus held;
            String holder;
            try {
                held = fs.getFileStatus(claim);
                holder = readText(claim);
            } catch (FileNotFoundException e) {
                continue;
            }
            if (System.currentTimeMillis() - held.getModificationTime() > claimTimeout.toMillis()) {
                // its holder died: no refresh for the whole timeout. Read it again just before deleting it: a holder that
                // refreshed it, or another attempt that took it over meanwhile, keeps it
                try {
                    if (fs.getFileStatus(claim).getModificationTime() == held.getModificationTime() && readText(claim).equals(holder)) {
                        fs.delete(claim, false);
                        tookOver = true;
                    }
                } catch (FileNotFoundException e) {
                    // gone already: try to create it again
                }
                continue;
            }
            Thread.sleep(Math.max(50, Math.min(1000, claimTimeout.toMillis() / 10)));
        }
        Path writing = new Path(out, CompletionMarker.WRITING);
        try {
            hook.claimed();
            // the holder that committed may have released the claim between this attempt's check and its create
            CompletionMarker done = committed();
            if (done != null) {
                fs.delete(claim, false);
                return new Result(Outcome.COMMITTED_BY_ANOTHER, done);
            }
            if (fs.exists(out) && fs.listStatus(out).length > 0) {
                if (!tookOver || !fs.exists(writing)) {
                    throw new CommitException(out + " exists and has no completion record (" + CompletionMarker.NAME + ") nor "
                            + CompletionMarker.WRITING + " of an attempt of this job: it was not written by this job; delete it or choose another out");
                }
                // a dead holder's partial files: its claim went stale, and it marked the folder as its own before writing
                fs.delete(out, true);
            }
        } catch (IOException e) {
            fs.delete(claim, false);
            throw e;
        }
        ScheduledExecutorService refresher = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "loramerge-claim-" + name);
            t.setDaemon(true);
            return t;
        });
        Holding holding = new Holding(claim, attempt);
        boolean written = false;
        try {
            long every = Math.max(10, claimTimeout.toMillis() / 4);
            refresher.scheduleAtFixedRate(holding::refresh, every, every, TimeUnit.MILLISECONDS);
            try (FSDataOutputStream s = fs.create(writing, true)) {
                s.write(attempt.getBytes(StandardCharsets.UTF_8));
            }
            upload(merged, out, holding);
            holding.check(true);
            marker.write(fs, out);
            written = true;
            fs.delete(writing, false);
            return new Result(Outcome.COMMITTED, marker);
        } finally {
            refresher.shutdownNow();
            if (!written && !holding.lost()) {
                // a failed holder clears what it wrote; should that fail too, the claim stays and goes stale, so the next holder clears it
                boolean release = true;
                try {
                    fs.delete(out, true);
                } catch (IOException e) {
                    release = false;
                }
                if (release) {
                    fs.delete(claim, false);
                }
            } else if (written) {
                fs.delete(claim, false);
            }
            // a holder that lost its claim leaves the output and the claim to the attempt that took it over
        }
    }

    /**
     * This attempt's hold on the claim: refreshed in the background while it uploads; lost once the
     * claim holds another attempt's id, or once refreshes have failed for half the claim timeout (the
     * other half is the margin before a waiting attempt may take it over).
     */
    private final class Holding {
        private final Path claim;
        private final String attempt;
        private volatile long heldAt = System.currentTimeMillis();
        private volatile boolean taken;

        Holding(Path claim, String attempt) {
            this.claim = claim;
            this.attempt = attempt;
        }

        void refresh() {
            try {
                if (!readText(claim).equals(attempt)) {
                    taken = true;
                    return;
                }
                try (FSDataOutputStream s = fs.create(claim, true)) {
                    s.write(attempt.getBytes(StandardCharsets.UTF_8));
                }
                heldAt = System.currentTimeMillis();
            } catch (FileNotFoundException e) {
                taken = true;
            } catch (IOException e) {
                // the next refresh tries again; check() gives up once they have failed for half the timeout
            }
        }

        boolean lost() {
            return taken || System.currentTimeMillis() - heldAt > claimTimeout.toMillis() / 2;
        }

        /** Throws when the claim is lost; with {@code read}, reads the claim first (before the record is written). */
        void check(boolean read) throws IOException {
            if (read && !taken) {
                try {
                    taken = !readText(claim).equals(attempt);
                } catch (FileNotFoundException e) {
                    taken = true;
                }
            }
            if (lost()) {
                throw new IOException(out + ": attempt " + attempt + " lost its claim " + claim.getName() + " ("
                        + (taken ? "another attempt took it over" : "refreshing it failed for half of --claim-timeout")
                        + "); it stops without writing the completion record");
            }
        }
    }

    private String readText(Path p) throws IOException {
        try (InputStream in = fs.open(p)) {
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
    }

    /** Creates {@code p} holding {@code attempt} unless it exists: false when it does. */
    private boolean createIfAbsent(Path p, String attempt) throws IOException {
        try (FSDataOutputStream s = fs.createFile(p).overwrite(false).recursive().build()) {
            s.write(attempt.getBytes(StandardCharsets.UTF_8));
            return true;
        } catch (org.apache.hadoop.fs.FileAlreadyExistsException | FileAlreadyExistsException e) {
            return false;
        }
    }

    /** Copies every file of the local folder {@code from} to {@code to}, calling the hook after each. */
    private void upload(java.nio.file.Path from, Path to) throws IOException {
        upload(from, to, null);
    }

    /** {@link #upload(java.nio.file.Path, Path)}, stopping once {@code holding} (when not null) has lost its claim. */
    private void upload(java.nio.file.Path from, Path to, Holding holding) throws IOException {
        List<java.nio.file.Path> files;
        try (Stream<java.nio.file.Path> walk = Files.walk(from)) {
            files = walk.filter(Files::isRegularFile).sorted().toList();
        }
        int n = 0;
        for (java.nio.file.Path f : files) {
            Path target = new Path(to, from.relativize(f).toString().replace('\\', '/'));
            try (InputStream in = Files.newInputStream(f); OutputStream o = fs.create(target, true)) {
                in.transferTo(o);
            }
            hook.uploaded(++n);
            if (holding != null) {
                holding.check(false);
            }
        }
    }
}
