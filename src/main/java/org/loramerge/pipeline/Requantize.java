package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.Future;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Stages.Stage;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.QuantizedOutput;
import org.loramerge.quant.Requantizer;

/**
 * {@link OutputTensor.Route#REQUANTIZE} ({@code merge --to nf4}): row blocks that hold whole
 * quantization blocks (a multiple of {@code blockElements / gcd(cols, blockElements)} rows), so no
 * quantization block straddles two workers, sized by the engine's working memory per element; each
 * block merged and requantized by the engine, its codes written at their offset in the shard by the
 * worker, completions taken in order (an engine may hold a weight's codes back until its last block,
 * when its one scale needs the whole weight, and give them with the scales). After the last block the engine settles the scales, the rest
 * of the group is written at its offsets (a tensor known only then, such as a quant state holding
 * the weight's mean absmax, as a late tensor of the shard), and the survival sums are added up in
 * chunk order (the same figures whatever the thread count).
 */
final class Requantize implements TensorStrategy {
    static final Requantize INSTANCE = new Requantize();

    private Requantize() {
    }

    @Override
    public void schedule(OutputTensor t, MergeContext ctx) throws Exception {
        long opened = ctx.openJobs.open(List.of(t), ctx.executor);
        long preparing = System.nanoTime();
        TensorJob job = TensorJob.prepare(t);
        BlockStats stats = ctx.statsFor(t);
        int cols = job.cols();
        if (job.needsColumnPass()) {
            long rowBytes = (long) cols * t.dtype().sizeInBytes();
            try (TensorMerge columns = ctx.backend.openMerge(job)) {
                ColumnNorms.compute(ctx, job, columns, ctx.rowsPerBlock(t, rowBytes, rowBytes));
            }
        }
        if (job.needsSelection()) {
            long rowBytes = (long) cols * t.dtype().sizeInBytes();
            try (TensorMerge selection = ctx.backend.openMerge(job)) {
                MagnitudeSelection.compute(ctx, job, selection, ctx.rowsPerBlock(t, rowBytes, rowBytes));
            }
        }
        Requantization requant = ctx.backend.openRequantization(job);
        ctx.stages.since(Stage.FACTORS, preparing, 0);
        TensorSource.Form form = requant.input();
        CheckpointWriter.Shard shard = ctx.shard;
        List<SafetensorsWriter.Entry> group = t.entries();
        long codesOffset = shard.offsetOf(group.get(0).name());
        long rows = job.rows();
        long perBlock = rowsPerBlock(cols, requant.blockElements(), (long) cols * requant.workingBytesPerElement(), ctx.options.blockBytes());
        for (long r0 = 0; r0 < rows; r0 += perBlock) {
            long row0 = r0;
            int n = (int) Math.min(perBlock, rows - r0);
            Future<Long> f = ctx.executor.submit(() -> {
                long reading = System.nanoTime();
                try (TensorSource.Bytes src = t.source().readRows(form, row0, n, cols)) {
                    long merging = ctx.stages.since(Stage.READ, reading, src.bytes().remaining());
                    BlockStats s = new BlockStats(ctx.stages);
                    ByteBuffer codes = requant.mergeRows(row0, n, src.bytes(), s);
                    stats.add(s);
                    long bytes = codes.remaining();
                    long writing = ctx.stages.since(Stage.MERGE, merging, bytes);
                    shard.writeAt(codesOffset + requant.codesOffset(row0 * cols), codes);
                    ctx.stages.since(Stage.WRITE, writing, bytes);
                    return bytes;
                }
            });
            ctx.executor.then(() -> shard.written(BlockExecutor.get(f)));
        }
        List<Future<Requantizer.Change>> measured = new ArrayList<>();
        List<Future<Finished>> finishing = new ArrayList<>(1);
        // every block is merged: the engine settles the scales on a worker, not on this thread, which
        // would otherwise stop handing out blocks while a weight with one scale for the whole tensor
        // brings all its codes back and writes them (0.6 s of FP8 per tensor's 7 s on the 7B shape)
        ctx.executor.then(() -> finishing.add(ctx.executor.submit(() -> {
            Requantization.Result r;
            try {
                ctx.checkFinite(t, stats);
                r = requant.finish();
            } finally {
                requant.close();
            }
            long bytes = r.codes().remaining();
            if (bytes > 0) { // codes that waited for the whole weight (one scale for the whole tensor)
                long writing = System.nanoTime();
                shard.writeAt(codesOffset + requant.codesOffset(0), r.codes());
                ctx.stages.since(Stage.WRITE, writing, bytes);
            }
            return new Finished(r, bytes);
        })));
        ctx.executor.then(() -> {
            Finished f = BlockExecutor.get(finishing.get(0));
            Requantization.Result r = f.result();
            if (f.codeBytes() > 0) {
                shard.written(f.codeBytes());
            }
            for (int i = 0; i < r.tail().size(); i++) {
                ByteBuffer b = r.tail().get(i);
                SafetensorsWriter.Entry e = group.get(i + 1);
                if (e.late()) {
                    shard.writeLate(e.name(), b);
                } else {
                    long bytes = b.remaining();
                    shard.writeAt(shard.offsetOf(e.name()), b);
                    shard.written(bytes);
                }
            }
            ctx.progress.tensorDone();
            for (Callable<Requantizer.Change> m : r.measures()) {
                measured.add(ctx.executor.submit(m));
            }
        });
        ctx.executor.then(() -> {
            Requantizer.Change change = Requantizer.Change.NONE;
            for (Future<Requantizer.Change> f : measured) {
                change = change.plus(BlockExecutor.get(f)); // in chunk order: the same sums whatever the thread count
            }
            if (t.isAdapted()) { // a weight only converted to another format (GPTQ to NF4) has no adapter change to survive
                ctx.survivals.add(survival(t, change));
            }
            ctx.openJobs.close(opened); // the measures were the last to hold the requantizer's codes
        });
    }

    /**
     * Rows per block of a requantized weight: whole quantization blocks (a multiple of
     * {@link Requantizer#rowsOfWholeBlocks} rows), about a streaming block of {@code bytesPerRow}.
     */
    static long rowsPerBlock(long cols, long blockElements, long bytesPerRow, int blockBytes) {
        long align = Requantizer.rowsOfWholeBlocks(cols, blockElements);
        long fit = Math.max(1, blockBytes / bytesPerRow);
        return Math.max(align, fit / align * align);
    }

    /** A weight's settled result, its codes (codeBytes of them, when the engine held them back) already written. */
    private record Finished(Requantization.Result result, long codeBytes) {
    }

    private static MergeReport.Survival survival(OutputTensor t, Requantizer.Change change) {
        QuantizedOutput out = t.quantizedOutput();
        return MergeReport.Survival.of(t.name(), t.shape(), out.blockElements(), out.isDoubleQuant(), t.numElements(), change.codesChanged(),
                Math.sqrt(change.deltaSq()), Math.sqrt(change.sumSq()), change.dot());
    }
}
