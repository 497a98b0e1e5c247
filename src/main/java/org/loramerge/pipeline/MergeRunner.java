package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.CarriedFiles;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.verify.Verifier;

/**
 * Streams a {@link MergePlan} to disk: shard by shard, each output tensor is handed to the
 * {@link TensorStrategy} of its route, which cuts it into blocks computed by the backend on worker
 * threads, each written at its offset in the shard by the worker that made it, and completed in
 * order by the calling thread ({@link BlockExecutor}: progress, errors), with a bounded number of
 * blocks in flight. Memory is bounded by (blocks in flight) x (block size) plus one tensor's
 * adapter factors, whatever the model's size; a requantized weight adds its codes until it is
 * written. Then the index, config.json and the carried files, an optional verification of the
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
     */
    public record Options(boolean allowNonFinite, int blockBytes, int verifyRows) {
        public Options(boolean allowNonFinite, int blockBytes) {
            this(allowNonFinite, blockBytes, 0);
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
        long start = System.nanoTime();
        MergeContext ctx = new MergeContext(backend, options, progress);
        MergeReport report = new MergeReport();
        long written;
        try (CheckpointWriter writer = new CheckpointWriter(out, progress)) {
            for (MergePlan.Shard shard : plan.shards()) {
                List<SafetensorsWriter.Entry> entries = new ArrayList<>();
                for (OutputTensor t : shard.tensors()) {
                    entries.addAll(t.entries());
                }
                try (CheckpointWriter.Shard s = writer.openShard(shard.fileName(), entries)) {
                    ctx.shard = s;
                    for (OutputTensor t : shard.tensors()) {
                        TensorStrategy.of(t.route()).schedule(t, ctx);
                    }
                    ctx.executor.drain();
                    s.finish();
                }
            }
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
            written = writer.tensorBytes();
            writer.commit();
        } finally {
            ctx.executor.close();
        }
        progress.finish();
        report.seconds = (System.nanoTime() - start) / 1e9;
        report.engine = backend.describe();
        report.output = out.target().toString();
        report.shards = plan.shards().size();
        report.bytesWritten = written;
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
            report.requantization = MergeReport.Requantization.of(ctx.survivals);
        }
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
