package org.loramerge.batch;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.MergeOptions;
import org.loramerge.api.MergeResult;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.ExitCode;
import org.loramerge.format.DType;
import org.loramerge.errors.OutputException;
import org.loramerge.errors.UsageException;
import org.loramerge.errors.UserException;
import org.loramerge.pipeline.Progress;

/**
 * Runs a batch manifest on this host: every line a {@code merge}, several at once (one worker per
 * device slot), each failure reported with its line and the others going on; a line whose output
 * is there with the checksum recorded in the state folder, merged from inputs that have not changed
 * since (their recorded fingerprint), is skipped, the others (re)done.
 */
public final class BatchRunner {
    /**
     * How a batch runs.
     *
     * @param devices    {@code all} (every visible GPU), {@code cpu}, or a list such as {@code cuda:0,cuda:1};
     *                   null: every GPU where there is one, else the CPU
     * @param parallel   merges at once in total, spread over the devices in turn; null: one per device
     * @param strict     refuse the whole batch up front when any line is bad
     * @param stateDir   the state folder; null: the manifest's name plus {@code .state} beside it
     * @param sharedRead lines that share a base are merged in one pass over it ({@link LoraMerge#mergeShared})
     * @param log        where progress goes, or null for none
     */
    public record Options(String devices, Integer parallel, boolean strict, Path stateDir, boolean sharedRead, PrintStream log) {
    }

    /** Progress lines are printed at least this often while merges run. */
    static final long STATUS_SECONDS = 10;

    private final Options options;
    private final PrintStream log;
    private final AtomicInteger done = new AtomicInteger();
    private final AtomicInteger skipped = new AtomicInteger();
    private final AtomicInteger failed = new AtomicInteger();
    private final AtomicInteger running = new AtomicInteger();
    private final AtomicLong bytes = new AtomicLong();
    private final long start = System.nanoTime();
    /** Each line's id in the state folder, by line number: from its locations as written ({@link ManifestEntry#relativeTo}). */
    private final Map<Integer, String> ids = new HashMap<>();
    private int total;

    private BatchRunner(Options options) {
        this.options = options;
        this.log = options.log();
    }

    /**
     * Runs the manifest {@code manifestFile}.
     *
     * @throws UserException before anything runs: a manifest that cannot be read, two lines with one
     *                       output, any bad line under {@code strict} (exit 3), no GPU for {@code all}
     *                       (exit 7), a state folder in use (exit 4)
     */
    public static BatchResult run(Path manifestFile, Options options) throws UserException, IOException {
        return new BatchRunner(options).run(manifestFile);
    }

    private BatchResult run(Path manifestFile) throws UserException, IOException {
        if (options.parallel() != null && options.parallel() < 1) {
            throw new UsageException("--parallel " + options.parallel() + ": expected 1 or more merges at once");
        }
        Manifest manifest = Manifest.read(manifestFile);
        Path dir = manifestFile.toAbsolutePath().normalize().getParent();
        Path stateDir = (options.stateDir() != null ? options.stateDir()
                : manifestFile.resolveSibling(manifestFile.getFileName() + ".state")).toAbsolutePath().normalize();
        List<ManifestEntry> entries = new ArrayList<>();
        List<BatchResult.LineResult> results = new ArrayList<>();
        List<String> problems = new ArrayList<>();
        for (ManifestProblem p : manifest.problems()) {
            problems.add(p.message());
            results.add(BatchResult.LineResult.failed(p.line(), null, null, ExitCode.BAD_INPUT.code(), p.message(), 0));
        }
        for (ManifestEntry raw : manifest.entries()) {
            ids.put(raw.line(), raw.relativeTo(dir).id());
            ManifestEntry e = raw.resolve(dir);
            String problem = inputProblem(manifest.source(), e, stateDir);
            if (problem != null) {
                problems.add(problem);
                results.add(BatchResult.LineResult.failed(e.line(), e.out(), null, ExitCode.BAD_INPUT.code(), problem, 0));
            } else {
                entries.add(e);
            }
        }
        if (options.strict() && !problems.isEmpty()) {
            throw new ManifestException(manifestFile, manifest.source() + ": " + problems.size() + " line" + (problems.size() == 1 ? "" : "s")
                    + " cannot run, so nothing was run (--strict):\n  " + String.join("\n  ", problems));
        }
        List<String> devices = devices(options.devices());
        int slots = options.parallel() != null ? options.parallel() : devices.size();
        total = manifest.entries().size() + manifest.problems().size();
        failed.set(results.size());
        if (log != null) {
            for (String p : problems) {
                log.println("batch: skipped: " + p);
            }
            log.println("batch: " + total + " lines, " + entries.size() + " to check and run on " + String.join(", ", devices)
                    + " (" + slots + " at once); state in " + stateDir);
        }
        try (BatchState state = BatchState.open(stateDir, dir)) {
            results.addAll(runAll(entries, devices, slots, state));
        }
        results.sort(Comparator.comparingInt(BatchResult.LineResult::line));
        double seconds = (System.nanoTime() - start) / 1e9;
        BatchResult.Totals totals = new BatchResult.Totals(total, done.get(), skipped.get(), failed.get(), bytes.get(), seconds,
                failed.get() == 0 ? ExitCode.OK.code() : ExitCode.BAD_INPUT.code());
        if (log != null) {
            log.println(status("batch: finished:"));
        }
        return new BatchResult(manifestFile.toString(), stateDir.toString(), results, totals);
    }

    /** Why the resolved line {@code e} cannot run here, or null: URIs, missing folders, an output where the state folder is. */
    static String inputProblem(String source, ManifestEntry e, Path stateDir) {
        String where = source + ":" + e.line() + ": ";
        List<String> locations = new ArrayList<>();
        locations.add(e.base());
        locations.addAll(e.adapters());
        locations.add(e.out());
        for (String l : locations) {
            if (ManifestEntry.isUri(l)) {
                return where + l + " is a URI; loramerge batch reads and writes local folders (run manifests with URIs on a cluster "
                        + "with the Spark job, or give a local path)";
            }
        }
        if (!Files.isDirectory(Path.of(e.base()))) {
            return where + "\"base\": " + e.base() + ": no such folder; correct the path (relative paths start at the manifest's folder)";
        }
        for (String a : e.adapters()) {
            if (!Files.isDirectory(Path.of(a))) {
                return where + "\"adapter\": " + a + ": no such folder; correct the path (relative paths start at the manifest's folder)";
            }
        }
        Path out = Path.of(e.out()).toAbsolutePath().normalize();
        if (stateDir.startsWith(out) || out.startsWith(stateDir)) {
            return where + "\"out\": " + e.out() + " overlaps the batch's state folder " + stateDir + "; choose another output or --state DIR";
        }
        return null;
    }

    /**
     * The devices of {@code spec}: {@code cpu}; {@code all}, every visible GPU; a comma-separated list
     * of {@code cuda:N} (and {@code cpu}); null, every GPU where there is one, else the CPU.
     */
    static List<String> devices(String spec) throws UserException {
        if (spec == null || spec.equalsIgnoreCase("all")) {
            int n = Backends.cudaDeviceCount();
            if (n == 0) {
                if (spec == null) {
                    return List.of("cpu");
                }
                throw DeviceUnavailableException.noDevice("--devices all: no CUDA device is visible here; use --devices cpu", null);
            }
            List<String> out = new ArrayList<>();
            for (int i = 0; i < n; i++) {
                out.add("cuda:" + i);
            }
            return out;
        }
        List<String> out = new ArrayList<>();
        for (String d : spec.split(",")) {
            String t = d.strip().toLowerCase(Locale.ROOT);
            if (t.equals("cuda")) {
                t = "cuda:0";
            }
            if (!t.equals("cpu") && !t.matches("cuda:\\d+")) {
                throw new UsageException("--devices " + spec + ": expected all, cpu, or a list of cuda:N such as cuda:0,cuda:1");
            }
            if (out.contains(t)) {
                throw new UsageException("--devices " + spec + " names " + t + " twice; use --parallel N for several merges per device");
            }
            out.add(t);
        }
        return out;
    }

    private List<BatchResult.LineResult> runAll(List<ManifestEntry> entries, List<String> devices, int slots, BatchState state)
            throws IOException {
        ConcurrentLinkedQueue<List<ManifestEntry>> queue = new ConcurrentLinkedQueue<>(tasks(entries, slots, options.sharedRead()));
        ConcurrentLinkedQueue<BatchResult.LineResult> results = new ConcurrentLinkedQueue<>();
        // the cores are shared: each merge's CPU work (all of it on the CPU engine) gets its part
        int threadsPerMerge = Math.max(1, Runtime.getRuntime().availableProcessors() / slots);
        ScheduledExecutorService ticker = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "loramerge-batch-status");
            t.setDaemon(true);
            return t;
        });
        if (log != null) {
            ticker.scheduleAtFixedRate(() -> {
                if (running.get() > 0) {
                    log.println(status("batch:"));
                }
            }, STATUS_SECONDS, STATUS_SECONDS, TimeUnit.SECONDS);
        }
        List<Thread> workers = new ArrayList<>();
        for (int i = 0; i < Math.min(slots, Math.max(1, queue.size())); i++) {
            String device = devices.get(i % devices.size());
            Thread t = new Thread(() -> {
                List<ManifestEntry> task;
                while ((task = queue.poll()) != null) {
                    results.addAll(runTask(task, device, threadsPerMerge, state));
                }
            }, "loramerge-batch-" + i + "-" + device);
            workers.add(t);
            t.start();
        }
        try {
            for (Thread t : workers) {
                t.join();
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("the batch was interrupted", e);
        } finally {
            ticker.shutdownNow();
        }
        return new ArrayList<>(results);
    }

    /**
     * The work units: with {@code sharedRead}, the lines that can share a pass over one base (same base
     * folder, dtype, to, shard size, link rule and device) in up to {@code slots} groups of two or
     * more, so that every device still gets work; every other line alone.
     */
    static List<List<ManifestEntry>> tasks(List<ManifestEntry> entries, int slots, boolean sharedRead) {
        List<List<ManifestEntry>> tasks = new ArrayList<>();
        if (!sharedRead) {
            entries.forEach(e -> tasks.add(List.of(e)));
            return tasks;
        }
        Map<String, List<ManifestEntry>> groups = new LinkedHashMap<>();
        for (ManifestEntry e : entries) {
            groups.computeIfAbsent(shareKey(e), k -> new ArrayList<>()).add(e);
        }
        for (List<ManifestEntry> g : groups.values()) {
            int chunks = Math.max(1, Math.min(slots, g.size() / 2));
            List<List<ManifestEntry>> split = new ArrayList<>();
            for (int c = 0; c < chunks; c++) {
                split.add(new ArrayList<>());
            }
            for (int i = 0; i < g.size(); i++) {
                split.get(i % chunks).add(g.get(i));
            }
            tasks.addAll(split);
        }
        return tasks;
    }

    /** What lines must agree on to share a pass over their base. */
    private static String shareKey(ManifestEntry e) {
        MergeOptions o = e.options();
        Path base = Path.of(e.base()).toAbsolutePath().normalize();
        try {
            base = base.toRealPath();
        } catch (IOException x) {
            // checked up front; compared as written if it vanished since
        }
        String dtype;
        try {
            DType d = LoraMerge.parseDtype(o.dtype());
            dtype = d == null ? "auto" : d.name();
        } catch (UsageException x) {
            dtype = o.dtype();
        }
        return String.join("\u0000", base.toString(), dtype, String.valueOf(o.to()).toLowerCase(Locale.ROOT), Long.toString(o.maxShardSize()),
                Boolean.toString(o.followSymlinks()), String.valueOf(o.device()));
    }

    /** A line to be merged now: the checks passed. */
    private record Pending(ManifestEntry entry, Path out, MergeOptions options, String device, BatchState.Entry record, String inputs, long t0) {
    }

    private String id(ManifestEntry e) {
        return ids.get(e.line());
    }

    /** The lines of one task: each skipped or refused on its own, the rest merged in one shared pass when two or more remain. */
    private List<BatchResult.LineResult> runTask(List<ManifestEntry> task, String workerDevice, int threads, BatchState state) {
        List<BatchResult.LineResult> results = new ArrayList<>();
        List<Pending> pending = new ArrayList<>();
        for (ManifestEntry e : task) {
            Object checked = check(e, workerDevice, threads, state);
            if (checked instanceof Pending) {
                pending.add((Pending) checked);
            } else {
                results.add((BatchResult.LineResult) checked);
            }
        }
        if (pending.size() >= 2) {
            pending = runShared(pending, threads, state, results);
        }
        for (Pending p : pending) {
            results.add(runAlone(p, state));
        }
        return results;
    }

    /** A skipped or failed line's result, or the {@link Pending} merge. Never throws. */
    private Object check(ManifestEntry e, String workerDevice, int threads, BatchState state) {
        Path out = Path.of(e.out());
        String device = e.options().device() != null ? e.options().device() : workerDevice;
        long t0 = System.nanoTime();
        try {
            BatchState.Entry record = state.get(id(e));
            boolean exists = Files.exists(out);
            List<Path> folders = new ArrayList<>();
            folders.add(Path.of(e.base()));
            e.adapters().forEach(a -> folders.add(Path.of(a)));
            String inputs = BatchState.inputs(folders);
            if (record != null && BatchState.DONE.equals(record.status()) && exists && Files.isDirectory(out) && !inputs.equals(record.inputs())) {
                if (log != null) {
                    log.println("batch: line " + e.line() + ": its base or adapters changed since the batch wrote " + out + "; merging it again");
                }
            } else if (record != null && BatchState.DONE.equals(record.status()) && exists && Files.isDirectory(out)) {
                Map<String, String> files = BatchState.hashes(out);
                if (files.equals(record.files())) {
                    skipped.incrementAndGet();
                    if (log != null) {
                        log.println("batch: line " + e.line() + ": " + out + " is there with its recorded checksum; skipped");
                    }
                    return new BatchResult.LineResult(e.line(), e.out(), BatchResult.SKIPPED, 0, record.bytes(), record.checksum(), null,
                            null, null, null, null);
                }
                if (log != null) {
                    log.println("batch: line " + e.line() + ": " + out + " changed since the batch wrote it; merging it again");
                }
            }
            boolean overwrite = e.options().overwrite() || (exists && state.wrote(out));
            if (exists && !overwrite) {
                throw new OutputException(out, out + " exists and this batch did not write it (no record in "
                        + state.dir() + "); remove it, or add \"overwrite\": true to line " + e.line(), null);
            }
            MergeOptions o = e.options().withOverwrite(overwrite);
            if (o.threads() == 0) {
                o = o.withThreads(threads);
            }
            return new Pending(e, out, o, device, record, inputs, t0);
        } catch (UserException x) {
            return fail(e, device, x.exitCode().code(), x.getMessage(), t0);
        } catch (IOException x) {
            return fail(e, device, ExitCode.OUTPUT.code(), out + ": " + x, t0);
        } catch (RuntimeException | Error x) {
            return internal(e, device, x, t0);
        }
    }

    /**
     * Merges {@code pending} (two or more lines of one base) in one pass over the base; returns the
     * lines still to be merged alone (those that could not share it, or all when the pass failed).
     */
    private List<Pending> runShared(List<Pending> pending, int threads, BatchState state, List<BatchResult.LineResult> results) {
        Pending first = pending.get(0);
        List<LoraMerge.SharedMerge> merges = new ArrayList<>();
        List<Pending> started = new ArrayList<>();
        List<Pending> alone = new ArrayList<>();
        for (Pending p : pending) {
            try {
                state.running(id(p.entry()), p.entry().line(), p.out());
                started.add(p);
                merges.add(new LoraMerge.SharedMerge(p.entry().adapters().stream().map(Path::of).toList(), p.entry().combination(), p.out(),
                        p.options()));
            } catch (UserException x) {
                results.add(fail(p.entry(), p.device(), x.exitCode().code(), x.getMessage(), p.t0()));
            }
        }
        if (started.size() < 2) {
            forget(started, state, alone, results);
            return alone;
        }
        if (log != null) {
            StringBuilder lines = new StringBuilder();
            for (Pending p : started) {
                lines.append(lines.length() == 0 ? "" : ", ").append(p.entry().line());
            }
            log.println("batch: lines " + lines + ": merging in one pass over " + first.entry().base() + " on " + first.device());
        }
        running.addAndGet(started.size());
        List<LoraMerge.SharedOutcome> outcomes;
        try {
            MergeOptions shared = first.options().withDevice(first.device()).withThreads(first.options().threads() > 0 ? first.options().threads() : threads);
            outcomes = LoraMerge.mergeShared(Path.of(first.entry().base()), merges, shared);
        } catch (UserException | IOException | RuntimeException x) {
            // the lines on their own say whose failure it is
            running.addAndGet(-started.size());
            forget(started, state, alone, results);
            return alone;
        }
        running.addAndGet(-started.size());
        // the written outputs' hashes, all files at once: hashing reads every byte the pass wrote
        List<Path> written = new ArrayList<>();
        for (int i = 0; i < started.size(); i++) {
            if (outcomes.get(i).result() != null) {
                written.add(started.get(i).out());
            }
        }
        Iterator<BatchState.Hashed> hashed = BatchState.hashes(written).iterator();
        for (int i = 0; i < started.size(); i++) {
            Pending p = started.get(i);
            LoraMerge.SharedOutcome o = outcomes.get(i);
            if (o.result() != null) {
                results.add(succeeded(p, o.result(), state, hashed.next()));
                continue;
            }
            try {
                state.failed(id(p.entry()), p.record());
            } catch (UserException x) {
                results.add(fail(p.entry(), p.device(), x.exitCode().code(), x.getMessage(), p.t0()));
                continue;
            }
            if (o.error() != null) {
                results.add(fail(p.entry(), p.device(), o.error().exitCode().code(), lineMessage(p.entry(), o.error()), p.t0()));
            } else {
                alone.add(p);
            }
        }
        return alone;
    }

    /** Takes back the running records of {@code started}, which are to run alone. */
    private void forget(List<Pending> started, BatchState state, List<Pending> alone, List<BatchResult.LineResult> results) {
        for (Pending p : started) {
            try {
                state.failed(id(p.entry()), p.record());
                alone.add(p);
            } catch (UserException x) {
                results.add(fail(p.entry(), p.device(), x.exitCode().code(), x.getMessage(), p.t0()));
            }
        }
    }

    /** One line merged on its own, as {@code loramerge merge} merges it. Never throws. */
    private BatchResult.LineResult runAlone(Pending p, BatchState state) {
        ManifestEntry e = p.entry();
        try {
            if (log != null) {
                log.println("batch: line " + e.line() + ": merging into " + p.out() + " on " + p.device());
            }
            MergeResult r;
            state.running(id(e), e.line(), p.out());
            running.incrementAndGet();
            try {
                r = e.withOptions(p.options()).run(Path.of(e.base()), e.adapters().stream().map(Path::of).toList(), p.out(), p.device(), null);
            } catch (UserException | IOException | RuntimeException | Error x) {
                state.failed(id(e), p.record());
                throw x;
            } finally {
                running.decrementAndGet();
            }
            return succeeded(p, r, state, BatchState.hashes(List.of(p.out())).get(0));
        } catch (UserException x) {
            return fail(e, p.device(), x.exitCode().code(), lineMessage(e, x), p.t0());
        } catch (IOException x) {
            return fail(e, p.device(), ExitCode.OUTPUT.code(), p.out() + ": " + x, p.t0());
        } catch (RuntimeException | Error x) {
            return internal(e, p.device(), x, p.t0());
        }
    }

    /**
     * A merge's failure as the line's: merge's "--out exists; pass --overwrite" (an output that
     * appeared after the batch checked it) names the line's option, as the batch has no --overwrite.
     */
    private static String lineMessage(ManifestEntry e, UserException x) {
        if (x instanceof OutputException && x.getMessage().contains("--out exists; pass --overwrite")) {
            return e.out() + " exists and this batch did not write it (it appeared after the batch checked the line); remove it, "
                    + "or add \"overwrite\": true to line " + e.line();
        }
        return x.getMessage();
    }

    /** Records a written output (its files' {@code hashed}) and counts it. */
    private BatchResult.LineResult succeeded(Pending p, MergeResult r, BatchState state, BatchState.Hashed hashed) {
        ManifestEntry e = p.entry();
        try {
            if (hashed.error() != null) {
                throw hashed.error();
            }
            Map<String, String> files = hashed.files();
            String checksum = BatchState.checksum(files);
            state.done(id(e), e.line(), p.out(), files, checksum, r.bytesWritten(), p.inputs(), r);
            done.incrementAndGet();
            bytes.addAndGet(r.bytesWritten());
            if (log != null) {
                log.println(String.format(Locale.ROOT, "batch: line %d: wrote %s (%s) in %.1f s on %s", e.line(), p.out(),
                        Progress.bytes(r.bytesWritten()), r.seconds(), r.engine()));
                log.println(status("batch:"));
            }
            return new BatchResult.LineResult(e.line(), e.out(), BatchResult.DONE, seconds(p.t0()), r.bytesWritten(), checksum, r.engine(),
                    p.device(), null, null, r);
        } catch (UserException x) {
            return fail(e, p.device(), x.exitCode().code(), x.getMessage(), p.t0());
        } catch (IOException x) {
            return fail(e, p.device(), ExitCode.OUTPUT.code(), p.out() + " was written but cannot be read back to record it: " + x, p.t0());
        }
    }

    private BatchResult.LineResult internal(ManifestEntry e, String device, Throwable x, long t0) {
        if (log != null) {
            log.println("batch: line " + e.line() + ": internal error, please report it with the manifest line and this trace:");
            x.printStackTrace(log);
        }
        return fail(e, device, ExitCode.INTERNAL.code(), "internal error: " + x, t0);
    }

    private BatchResult.LineResult fail(ManifestEntry e, String device, int code, String message, long t0) {
        failed.incrementAndGet();
        if (log != null) {
            log.println("batch: line " + e.line() + ": FAILED (exit " + code + "): " + message);
            log.println(status("batch:"));
        }
        return BatchResult.LineResult.failed(e.line(), e.out(), device, code, message, seconds(t0));
    }

    private static double seconds(long t0) {
        return (System.nanoTime() - t0) / 1e9;
    }

    /** "batch: 5/16 finished (3 done, 1 skipped, 1 failed), 2 running, 3.40 GB written, 210.0 MB/s, 16.2 s". */
    private String status(String prefix) {
        double s = (System.nanoTime() - start) / 1e9;
        int finished = done.get() + skipped.get() + failed.get();
        return String.format(Locale.ROOT, "%s %d/%d finished (%d done, %d skipped, %d failed), %d running, %s written, %s/s, %.1f s", prefix,
                finished, total, done.get(), skipped.get(), failed.get(), running.get(), Progress.bytes(bytes.get()),
                Progress.bytes((long) (bytes.get() / Math.max(s, 1e-3))), s);
    }
}
