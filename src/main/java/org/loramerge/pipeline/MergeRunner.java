package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Future;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Stages;
import org.loramerge.engine.Tuning;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.RoomLedger;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.CarriedFiles;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.verify.Verifier;

/**
 * Streams a {@link MergePlan} to disk: a few shards at once, their tensors interleaved
 * ({@link ShardOrder}, so that several files take writes at once), each output tensor is handed to the
 * {@link TensorStrategy} of its route, which cuts it into blocks computed by the backend on worker
 * threads, each written at its offset in the shard by the worker that made it, and completed in
 * order by the calling thread ({@link BlockExecutor}: progress, errors), with a bounded number of
 * blocks in flight. Memory is bounded by (blocks in flight) x (block size) plus the open tensors'
 * adapter factors (a requantized weight's codes too, until it is written), which are kept within
 * what the blocks leave of the JVM's memory ({@link OpenJobs}), whatever the model's size. Then the index, config.json and the carried files, an optional verification of the
 * finished output, the model card ({@link ModelCard}), and the commit ({@link CheckpointWriter}).
 */
public final class MergeRunner {
    /**
     * Knobs of a run.
     *
     * @param allowNonFinite keep elements that overflowed to infinity or became NaN instead of failing
     * @param blockBytes     output bytes per row block
     * @param verifyRows     rows per adapted tensor that {@code verify} recomputes exactly in the finished
     *                       output before it is renamed into place (0: no check); any error fails the merge
     * @param windowPerThread blocks per worker thread that may wait for the in-order hand-over ({@link Tuning#windowPerThread})
     * @param writes         how workers put their blocks into a shard ({@link Tuning#writes})
     * @param preadReads     whether workers read a dense tensor's rows by positional reads ({@link Tuning#preadReads});
     *                       null: as the engine prefers ({@link Backend#readsIntoBlockBuffers})
     * @param shardsAtOnce   output shards written at once, their tensors interleaved ({@link Tuning#shardsAtOnce})
     * @param flushBytes     bytes a shard takes between background flushes, 0 for none before its end ({@link Tuning#flushBytes})
     */
    public record Options(boolean allowNonFinite, int blockBytes, int verifyRows, int windowPerThread, WriteMode writes, Boolean preadReads,
                          int shardsAtOnce, long flushBytes) {
        public Options {
            if (shardsAtOnce < 1) {
                throw new IllegalArgumentException("shardsAtOnce " + shardsAtOnce + " < 1");
            }
            if (flushBytes < 0) {
                throw new IllegalArgumentException("flushBytes " + flushBytes + " < 0");
            }
        }

        public Options(boolean allowNonFinite, int blockBytes, int verifyRows, int windowPerThread, WriteMode writes, Boolean preadReads,
                       int shardsAtOnce) {
            this(allowNonFinite, blockBytes, verifyRows, windowPerThread, writes, preadReads, shardsAtOnce, Tuning.DEFAULT_FLUSH_BYTES);
        }

        public Options(boolean allowNonFinite, int blockBytes, int verifyRows, int windowPerThread, WriteMode writes, Boolean preadReads) {
            this(allowNonFinite, blockBytes, verifyRows, windowPerThread, writes, preadReads, Tuning.DEFAULTS.shardsAtOnce());
        }

        public Options(boolean allowNonFinite, int blockBytes, int verifyRows) {
            this(allowNonFinite, blockBytes, verifyRows, Tuning.DEFAULTS.windowPerThread(), Tuning.DEFAULTS.writes(), Tuning.DEFAULTS.preadReads());
        }

        public Options(boolean allowNonFinite, int blockBytes) {
            this(allowNonFinite, blockBytes, 0);
        }

        /** The options of {@code tuning}'s streaming knobs. */
        public Options(boolean allowNonFinite, int verifyRows, Tuning tuning) {
            this(allowNonFinite, tuning.blockBytes(), verifyRows, tuning.windowPerThread(), tuning.writes(), tuning.preadReads(),
                    tuning.shardsAtOnce(), tuning.flushBytes());
        }

        public static Options defaults() {
            return new Options(false, Backend.DEFAULT_BLOCK_BYTES, 0);
        }
    }

    private MergeRunner() {
    }

    /**
     * Writes the merged model to {@code out}. The base and adapter are only read. On any failure the
     * output folder does not appear.
     */
    public static MergeReport run(MergePlan plan, Backend backend, AtomicOutput out, Options options, Progress progress) throws Exception {
        return run(plan, backend, out, options, progress, Runtime.getRuntime().maxMemory());
    }

    /** {@link #run} in a JVM that may use {@code maxMemory} bytes, which sizes the threads and the open tensors' budget. */
    static MergeReport run(MergePlan plan, Backend backend, AtomicOutput out, Options options, Progress progress, long maxMemory) throws Exception {
        long start = System.nanoTime();
        WriteMode writes = options.writes().resolve(out.dir());
        try (RoomLedger.Claim room = claimRoom(plan, out, writes)) {
            MergeContext ctx = new MergeContext(backend, options, progress, maxMemory);
            MergeReport report = new MergeReport();
            try (CheckpointWriter writer = new CheckpointWriter(out, progress, writes, options.flushBytes(), room)) {
                stream(plan, writer, ctx);
                ctx.stages.since(Stages.Stage.STREAM, start, writer.tensorBytes());
                finish(plan, writer, options, report, ctx.stages);
            } finally {
                ctx.executor.close();
            }
            progress.finish();
            return fill(report, plan, ctx, backend, out, start);
        }
    }

    /**
     * Claims the room {@code plan}'s shards need on {@code out}'s file system ({@link RoomLedger}),
     * before anything is written: a merge written through memory mappings (the default into tmpfs,
     * {@link WriteMode#MIXED}) is refused when the room is not there beside what the other models this
     * process writes there still need, since a mapped write that finds no room ends the JVM instead
     * of failing the merge (each shard is checked again as it is created).
     */
    private static RoomLedger.Claim claimRoom(MergePlan plan, AtomicOutput out, WriteMode writes) throws IOException {
        // the tensors, each shard's header and its last page, the carried files, and a MiB for the index, config and card
        long bytes = plan.totalBytes() + (1L << 20);
        for (MergePlan.Shard shard : plan.shards()) {
            bytes += CheckpointWriter.headerBytes(entries(shard)) + 4096;
        }
        for (Path f : plan.filesToCopy()) {
            bytes += Files.size(f);
        }
        return RoomLedger.claim(out.dir(), out.target().toString(), "the merged model", bytes, writes.maps());
    }

    /**
     * Writes the plan's shards, {@link Options#shardsAtOnce} at a time with their tensors interleaved
     * ({@link ShardOrder}) and their blocks too (each open shard's work in its own lane of the
     * {@link BlockExecutor}, which the workers serve in turn); a shard whose last block is written is finished in the background
     * ({@link CheckpointWriter#finishLater}) while the others go on, and all of them are awaited here.
     */
    private static void stream(MergePlan plan, CheckpointWriter writer, MergeContext ctx) throws Exception {
        List<MergePlan.Shard> shards = plan.shards();
        long[][] sizes = new long[shards.size()][];
        for (int i = 0; i < sizes.length; i++) {
            List<OutputTensor> ts = shards.get(i).tensors();
            sizes[i] = new long[ts.size()];
            for (int j = 0; j < ts.size(); j++) {
                sizes[i][j] = ts.get(j).sizeInBytes();
            }
        }
        CheckpointWriter.Shard[] open = new CheckpointWriter.Shard[shards.size()];
        List<Future<?>> finishing = new ArrayList<>();
        try {
            for (ShardOrder.Step step : ShardOrder.of(sizes, ctx.options.shardsAtOnce())) {
                MergePlan.Shard shard = shards.get(step.shard());
                if (step.first()) {
                    open[step.shard()] = writer.openShard(shard.fileName(), entries(shard));
                }
                CheckpointWriter.Shard s = open[step.shard()];
                if (step.tensor() >= 0) {
                    ctx.shard = s;
                    ctx.executor.lane(step.lane());
                    OutputTensor t = shard.tensors().get(step.tensor());
                    TensorStrategy.of(t.route()).schedule(t, ctx);
                }
                if (step.last()) {
                    ctx.executor.then(() -> finishing.add(writer.finishLater(s)));
                }
                surfaceFailed(finishing);
            }
            ctx.executor.drain();
            long waiting = System.nanoTime();
            for (Future<?> f : finishing) {
                BlockExecutor.get(f);
            }
            ctx.stages.since(Stages.Stage.SHARD_FINISH, waiting, 0);
        } finally {
            for (CheckpointWriter.Shard s : open) {
                if (s != null) {
                    s.close();
                }
            }
        }
    }

    /** Rethrows the failure of a shard's background finish as soon as it is known. */
    private static void surfaceFailed(List<Future<?>> finishing) throws Exception {
        for (Future<?> f : finishing) {
            if (f.isDone()) {
                BlockExecutor.get(f);
            }
        }
    }

    /** One output of {@link #runShared}: its report, or why it alone was not written. */
    public record SharedOutcome(MergeReport report, Exception error) {
    }

    /**
     * Whether {@code plans} (of one base checkpoint) can be written by {@link #runShared}: the same
     * shards, each with the same tensors in the same order, names, dtypes and shapes.
     */
    public static boolean sameLayout(List<MergePlan> plans) {
        MergePlan first = plans.get(0);
        for (MergePlan p : plans) {
            if (p.shards().size() != first.shards().size()) {
                return false;
            }
            for (int i = 0; i < first.shards().size(); i++) {
                MergePlan.Shard a = first.shards().get(i);
                MergePlan.Shard b = p.shards().get(i);
                if (!a.fileName().equals(b.fileName()) || a.tensors().size() != b.tensors().size()) {
                    return false;
                }
                for (int j = 0; j < a.tensors().size(); j++) {
                    OutputTensor x = a.tensors().get(j);
                    OutputTensor y = b.tensors().get(j);
                    if (!x.name().equals(y.name()) || x.dtype() != y.dtype() || !Arrays.equals(x.shape(), y.shape())
                            || x.sizeInBytes() != y.sizeInBytes()) {
                        return false;
                    }
                }
            }
        }
        return true;
    }

    /**
     * Writes several merges of one base checkpoint in one pass ({@link #sameLayout} plans): tensor by
     * tensor, each block of base rows is read once and merged by every plan's engine handle into that
     * plan's own output, a tensor copied by all of them is mapped once; each output is then finished
     * and committed on its own, with exactly the bytes {@link #run} writes for its plan.
     *
     * @return per plan, in order, its report or the failure of its own finishing (index, verification, commit)
     * @throws Exception a failure while streaming the tensors, which leaves no output written: the
     *                   caller runs the merges one by one to find whose it is
     */
    public static List<SharedOutcome> runShared(List<MergePlan> plans, Backend backend, List<AtomicOutput> outs, List<Options> options)
            throws Exception {
        if (!sameLayout(plans)) {
            throw new IllegalArgumentException("plans of different layouts cannot share a pass");
        }
        long start = System.nanoTime();
        int n = plans.size();
        Progress progress = Progress.silent();
        List<WriteMode> writes = new ArrayList<>();
        List<RoomLedger.Claim> rooms = new ArrayList<>();
        MergeContext lead;
        try {
            for (int k = 0; k < n; k++) {
                writes.add(options.get(k).writes().resolve(outs.get(k).dir()));
                rooms.add(claimRoom(plans.get(k), outs.get(k), writes.get(k)));
            }
            lead = new MergeContext(backend, options.get(0), progress);
        } catch (IOException | RuntimeException | Error e) {
            rooms.forEach(RoomLedger.Claim::close);
            throw e;
        }
        List<MergeContext> ctxs = new ArrayList<>();
        List<CheckpointWriter> writers = new ArrayList<>();
        try {
            for (int k = 0; k < n; k++) {
                ctxs.add(k == 0 ? lead : new MergeContext(lead, options.get(k)));
                writers.add(new CheckpointWriter(outs.get(k), progress, writes.get(k), options.get(k).flushBytes(), rooms.get(k)));
            }
            MergePlan first = plans.get(0);
            long streaming = System.nanoTime();
            for (int i = 0; i < first.shards().size(); i++) {
                List<CheckpointWriter.Shard> shards = new ArrayList<>();
                try {
                    for (int k = 0; k < n; k++) {
                        MergePlan.Shard shard = plans.get(k).shards().get(i);
                        CheckpointWriter.Shard s = writers.get(k).openShard(shard.fileName(), entries(shard));
                        shards.add(s);
                        ctxs.get(k).shard = s;
                    }
                    for (int j = 0; j < first.shards().get(i).tensors().size(); j++) {
                        List<OutputTensor> ts = new ArrayList<>();
                        for (MergePlan p : plans) {
                            ts.add(p.shards().get(i).tensors().get(j));
                        }
                        SharedRows.schedule(ts, ctxs);
                    }
                    lead.executor.drain();
                    for (CheckpointWriter.Shard s : shards) {
                        s.finish();
                    }
                } finally {
                    for (CheckpointWriter.Shard s : shards) {
                        s.close();
                    }
                }
            }
            long streamed = 0;
            for (CheckpointWriter w : writers) {
                streamed += w.tensorBytes();
            }
            // every merge of the pass reports the pass's stages (its workers served them all); the merges'
            // own finishing and commits are left out of them rather than counted once per merge
            lead.stages.since(Stages.Stage.STREAM, streaming, streamed);
            List<SharedOutcome> outcomes = new ArrayList<>();
            for (int k = 0; k < n; k++) {
                MergeReport report = new MergeReport();
                try {
                    finish(plans.get(k), writers.get(k), options.get(k), report, Stages.NONE);
                    outcomes.add(new SharedOutcome(fill(report, plans.get(k), ctxs.get(k), backend, outs.get(k), start), null));
                } catch (Exception e) {
                    outcomes.add(new SharedOutcome(null, e));
                }
            }
            return outcomes;
        } finally {
            writers.forEach(CheckpointWriter::close);
            lead.executor.close();
            rooms.forEach(RoomLedger.Claim::close); // once no worker can still be copying into a mapping
        }
    }

    private static List<SafetensorsWriter.Entry> entries(MergePlan.Shard shard) {
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (OutputTensor t : shard.tensors()) {
            entries.addAll(t.entries());
        }
        return entries;
    }

    /** After the shards: the index, config.json, the carried files, the verification, the model card, and the commit. */
    private static void finish(MergePlan plan, CheckpointWriter writer, Options options, MergeReport report, Stages stages) throws Exception {
        long start = System.nanoTime();
        if (plan.isSharded()) {
            writer.writeIndex();
        }
        if (plan.config() != null) {
            writer.writeConfig(plan.config());
        }
        report.copiedFiles.addAll(writer.carry(plan.filesToCopy()));
        if (options.verifyRows() > 0) {
            verify(plan, writer.dir(), options.verifyRows(), report);
        }
        if (plan.provenance() != null) {
            writer.writeText(CarriedFiles.MODEL_CARD, ModelCard.render(plan, options.verifyRows(), report.verifiedWorstUlp));
        }
        report.bytesWritten = writer.tensorBytes(); // late tensors (a quant state) included, which the plan cannot size
        stages.since(Stages.Stage.FINISH, start, 0);
        long committing = System.nanoTime();
        writer.commit();
        stages.since(Stages.Stage.COMMIT, committing, 0);
    }

    private static MergeReport fill(MergeReport report, MergePlan plan, MergeContext ctx, Backend backend, AtomicOutput out, long start) {
        report.seconds = (System.nanoTime() - start) / 1e9;
        report.engine = backend.describe();
        report.output = out.target().toString();
        report.shards = plan.shards().size();
        report.adapterKeys = plan.keyUse().size();
        report.warnings.addAll(plan.warnings());
        report.notes.addAll(plan.notes());
        if (ctx.threadNote != null) {
            report.notes.add(ctx.threadNote);
        }
        for (OutputTensor t : plan.tensors()) {
            report.count(t.kind());
            BlockStats s = ctx.stats.get(t.name());
            if (t.kind() != OutputTensor.Kind.COPY) {
                report.tensors.add(new MergeReport.TensorOutcome(t.name(), t.kind().name().toLowerCase(Locale.ROOT),
                        t.isRequantized() ? t.quantizedOutput().kind() : t.dtype().name(), t.shape(), s == null ? 0 : s.exactlyRounded(), s == null ? 0 : s.exactFallbacks(),
                        s == null ? 0 : s.overflows(), s == null ? 0 : s.nans(), t.note()));
            }
        }
        if (!ctx.survivals.isEmpty()) {
            // in plan order, whatever order the interleaved shards completed them in: the sums are the same to the bit
            Map<String, Integer> order = new HashMap<>();
            for (OutputTensor t : plan.tensors()) {
                order.put(t.name(), order.size());
            }
            List<MergeReport.Survival> survivals = new ArrayList<>(ctx.survivals);
            survivals.sort(Comparator.comparingInt(s -> order.getOrDefault(s.name(), Integer.MAX_VALUE)));
            report.requantization = MergeReport.Requantization.of(survivals);
        }
        report.stages(ctx.stages);
        return report;
    }

    /** Recomputes sampled rows of the written model exactly, before it becomes visible. */
    private static void verify(MergePlan plan, Path written, int rows, MergeReport report) throws IOException, VerificationFailedException {
        try (Checkpoint c = Checkpoint.open(written)) {
            Verifier.Result r = Verifier.verify(plan, c, rows, 0);
            for (Verifier.TensorCheck t : r.tensors()) {
                if (t.kind() != OutputTensor.Kind.COPY) {
                    report.verifiedWorstUlp.put(t.name(), t.worstUlp());
                }
            }
            if (!r.passed()) {
                throw new VerificationFailedException("the merged model failed verification, so it was not written: "
                        + String.join("; ", r.problems()) + ". This is a loramerge bug: please report it");
            }
        } catch (SafetensorsException e) {
            throw new VerificationFailedException("the merged model could not be read back (" + e.getMessage() + "); it was not written");
        }
    }
}
