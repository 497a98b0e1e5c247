package org.loramerge.spark;

import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.function.Function;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.resource.ResourceInformation;
import org.loramerge.api.MergeResult;
import org.loramerge.api.VerifyOptions;
import org.loramerge.batch.Manifest;
import org.loramerge.batch.ManifestEntry;
import org.loramerge.errors.UserException;

/**
 * Runs one manifest line in a Spark task: inputs made local ({@link InputCache}), the merge by the
 * engine the CLI uses ({@link ManifestEntry#run}) into a local folder, then the
 * {@link OutputCommit}. Returns the line's {@link ResultRow}.
 *
 * <p>A line that fails for its input (a bad adapter, an output the job will not overwrite) is a
 * failed row at once: another attempt would fail the same way. Any other failure (a store's I/O
 * error, a lost upload) fails the task, so Spark runs it again, up to the last attempt, whose
 * failure is a failed row: the job always goes on to its other lines.
 */
final class LineTask implements Function<LineSpec, ResultRow> {
    private static final long serialVersionUID = 1L;

    private final Broadcast<String> manifestText;
    private final String manifestSource;
    private final Broadcast<HadoopConf> conf;
    private final JobOptions options;

    LineTask(Broadcast<String> manifestText, String manifestSource, Broadcast<HadoopConf> conf, JobOptions options) {
        this.manifestText = manifestText;
        this.manifestSource = manifestSource;
        this.conf = conf;
        this.options = options;
    }

    @Override
    public ResultRow call(LineSpec spec) throws Exception {
        TaskContext task = TaskContext.get();
        int attemptNumber = task.attemptNumber();
        String attempt = OutputCommit.newAttemptId(attemptNumber);
        String device = device(task, null);
        long start = System.nanoTime();
        Path workRoot = Path.of(options.workDir() != null ? options.workDir() : System.getProperty("java.io.tmpdir"));
        Path work = workRoot.resolve("loramerge-task-" + attempt);
        OutputCommit commit = null;
        List<Path> copies = new ArrayList<>();
        try {
            ManifestEntry entry = entry(spec.line());
            device = device(task, entry.options().device());
            if (entry.options().threads() == 0) {
                // the task's share of its executor's cores (spark.task.cpus), not every core: other tasks run beside it
                entry = entry.withOptions(entry.options().withThreads(task.cpus()));
            }
            Configuration c = conf.getValue().get();
            org.apache.hadoop.fs.Path out = new org.apache.hadoop.fs.Path(spec.out());
            commit = new OutputCommit(c, out, OutputCommit.Mode.parse(options.commit(), out.toUri().getScheme()),
                    Duration.ofMillis(options.claimTimeoutMillis()), hook(attemptNumber));
            List<org.apache.hadoop.fs.Path> inputs = new ArrayList<>();
            inputs.add(new org.apache.hadoop.fs.Path(spec.base()));
            for (String a : spec.adapters()) {
                inputs.add(new org.apache.hadoop.fs.Path(a));
            }
            String id = entry.id();
            String fingerprint = InputFingerprint.of(inputs, c);
            CompletionMarker done = commit.committed();
            if (done != null) {
                String stale = done.staleness(id, fingerprint);
                if (stale != null) {
                    throw new CommitException(spec.out() + " is a complete output of this job, but " + stale
                            + ": it is not what line " + spec.line() + " asks for; delete the folder to merge it again, or choose another out");
                }
                return new ResultRow(spec.line(), spec.written(), ResultRow.SKIPPED, null, seconds(start), done.bytes(), done.checksum(), null,
                        device, attemptNumber);
            }
            Path base = InputCache.local(new org.apache.hadoop.fs.Path(spec.base()), c, workRoot);
            copies.add(base);
            List<Path> adapters = new ArrayList<>();
            for (String a : spec.adapters()) {
                Path local = InputCache.local(new org.apache.hadoop.fs.Path(a), c, workRoot);
                copies.add(local);
                adapters.add(local);
            }
            Path merged = commit.engineFolder(work, attempt);
            MergeResult result = entry.run(base, adapters, merged, device, System.err);
            CompletionMarker marker = CompletionMarker.of(merged, spec.line(), id, fingerprint, attempt + " (task " + task.taskAttemptId() + ", stage "
                    + task.stageId() + "." + task.stageAttemptNumber() + ", partition " + task.partitionId() + ")");
            if (attemptNumber == 0 && options.slowFirstMillis() > 0) {
                Thread.sleep(options.slowFirstMillis());
            }
            OutputCommit.Result committed = commit.commit(merged, marker, attempt);
            CompletionMarker m = committed.marker();
            String verification = committed.outcome() == OutputCommit.Outcome.COMMITTED ? verification(result) : null;
            return new ResultRow(spec.line(), spec.written(), ResultRow.DONE, null, seconds(start), m.bytes(), m.checksum(), verification, device,
                    attemptNumber);
        } catch (UserException | CommitException e) {
            return ResultRow.failed(spec.line(), spec.written(), e.getMessage(), seconds(start), device, attemptNumber);
        } catch (Exception e) {
            CompletionMarker other = committedByAnother(commit);
            if (other != null) {
                // the attempt that committed first deleted this one's folder under it
                return new ResultRow(spec.line(), spec.written(), ResultRow.DONE, null, seconds(start), other.bytes(), other.checksum(), null, device,
                        attemptNumber);
            }
            if (attemptNumber + 1 < options.maxFailures()) {
                throw e;
            }
            return ResultRow.failed(spec.line(), spec.written(), "failed on its last attempt (" + (attemptNumber + 1) + " of "
                    + options.maxFailures() + "): " + e, seconds(start), device, attemptNumber);
        } finally {
            if (commit != null) {
                try {
                    commit.discard(attempt);
                } catch (IOException e) {
                    // left for the attempt that commits this output: it deletes every other attempt's folder
                    System.err.println("loramerge: line " + spec.line() + ": could not delete attempt " + attempt + ": " + e);
                }
            }
            InputCache.deleteTree(work);
            for (Path p : copies) {
                InputCache.release(p);
            }
        }
    }

    private static CompletionMarker committedByAnother(OutputCommit commit) {
        try {
            return commit == null ? null : commit.committed();
        } catch (IOException e) {
            return null;
        }
    }

    /** The line's entry, from the manifest text parsed again here (entries hold options that do not serialize). */
    private ManifestEntry entry(int line) throws UserException {
        for (ManifestEntry e : Manifest.parse(manifestText.getValue(), manifestSource).entries()) {
            if (e.line() == line) {
                return e;
            }
        }
        throw new IllegalStateException(manifestSource + ": line " + line + " parsed on the driver but not in the task");
    }

    /** cuda:ADDRESS when Spark gave this task a GPU (the first, if several), else the job's --device, else the line's device, else cpu. */
    private String device(TaskContext task, String lineDevice) {
        Map<String, ResourceInformation> resources = task.resourcesJMap();
        ResourceInformation gpu = resources.get("gpu");
        if (gpu != null && gpu.addresses().length > 0) {
            return "cuda:" + gpu.addresses()[0];
        }
        return options.device() != null ? options.device() : lineDevice != null ? lineDevice : "cpu";
    }

    private OutputCommit.Hook hook(int attemptNumber) {
        int failAfter = options.failAfterFiles();
        if (attemptNumber > 0 || failAfter <= 0) {
            return OutputCommit.Hook.NONE;
        }
        return files -> {
            if (files >= failAfter) {
                throw new IOException("injected failure after " + files + " uploaded files (test hook " + SparkBatch.FAIL_AFTER_FILES + ")");
            }
        };
    }

    private static String verification(MergeResult r) {
        if (r.verifiedRows() == 0) {
            return null;
        }
        double worst = 0;
        for (double u : r.verifiedWorstUlp().values()) {
            worst = Math.max(worst, u);
        }
        String rows = r.verifiedRows() == VerifyOptions.ALL_ROWS ? "every row" : r.verifiedRows() + " rows";
        return "passed: " + rows + " of " + r.verifiedWorstUlp().size() + " adapted tensors, worst " + worst + " ulp";
    }

    private static double seconds(long start) {
        return (System.nanoTime() - start) / 1e9;
    }
}
