package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.Future;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Stages.Stage;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;

/**
 * {@link OutputTensor.Route#ROWS} and {@link OutputTensor.Route#ROWS_AFTER_COLUMN_NORMS}: the
 * tensor cut into row blocks of about a streaming block each; a worker reads a block's source
 * rows (in the form the engine asks for), has the engine merge them into one of the circulating
 * output buffers and writes it at its place in the shard, so reads, copies and writes run on every
 * worker at once; the writing thread completes the blocks in order (progress, flush, errors). A
 * combination that keeps the top D by magnitude first runs its selection passes
 * ({@link MagnitudeSelection}).
 */
final class RowMerge implements TensorStrategy {
    static final RowMerge INSTANCE = new RowMerge();

    private RowMerge() {
    }

    @Override
    public void schedule(OutputTensor t, MergeContext ctx) throws Exception {
        long opened = ctx.openJobs.open(List.of(t), ctx.executor);
        long preparing = System.nanoTime();
        TensorJob job = TensorJob.prepare(t);
        BlockStats stats = ctx.statsFor(t);
        int cols = job.cols();
        long outRowBytes = (long) cols * t.dtype().sizeInBytes();
        long srcRowBytes = (long) cols * t.source().dtype().sizeInBytes();
        int rowsPerBlock = ctx.rowsPerBlock(t, srcRowBytes, outRowBytes);
        TensorMerge merge = ctx.backend.openMerge(job);
        ctx.stages.since(Stage.FACTORS, preparing, 0);
        if (t.route() == OutputTensor.Route.ROWS_AFTER_COLUMN_NORMS) {
            ColumnNorms.compute(ctx, job, merge, rowsPerBlock);
        }
        if (job.needsSelection()) {
            MagnitudeSelection.compute(ctx, job, merge, rowsPerBlock);
        }
        TensorSource.Form form = merge.input();
        // on a GPU (or with -Dloramerge.read=pread) a dense source's rows are read by positional reads into one of the
        // context's page-locked input blocks instead of mapped: no mapping, unmapping, page fault or staging copy per
        // block, one copy by the kernel
        boolean pread = ctx.preadReads && form == TensorSource.Form.VALUES && !t.source().isQuantized();
        CheckpointWriter.Shard shard = ctx.shard;
        long tensorOffset = shard.offsetOf(t.name());
        long rows = job.rows();
        for (long row0 = 0; row0 < rows; row0 += rowsPerBlock) {
            long r0 = row0;
            int n = (int) Math.min(rowsPerBlock, rows - row0);
            Future<Long> f = ctx.executor.submit(() -> {
                ByteBuffer dst = ctx.takeBuffer();
                ByteBuffer in = pread ? ctx.inputBuffers.take() : null;
                long reading = System.nanoTime();
                try (TensorSource.Bytes mapped = pread ? null : t.source().readRows(form, r0, n, cols)) {
                    ByteBuffer src = pread ? t.source().readRowsInto(r0, n, cols, in) : mapped.bytes();
                    long merging = ctx.stages.since(Stage.READ, reading, n * srcRowBytes);
                    dst.clear();
                    merge.mergeRows(r0, n, src, dst, stats);
                    long writing = ctx.stages.since(Stage.MERGE, merging, n * outRowBytes);
                    dst.limit((int) (n * outRowBytes));
                    dst.position(0);
                    shard.writeAt(tensorOffset + r0 * outRowBytes, dst);
                    ctx.stages.since(Stage.WRITE, writing, n * outRowBytes);
                    return n * outRowBytes;
                } finally {
                    if (in != null) {
                        ctx.inputBuffers.add(in);
                    }
                    ctx.buffers.add(dst);
                }
            });
            ctx.executor.then(() -> shard.written(BlockExecutor.get(f)));
        }
        // after the tensor's last block: the engine's handle closed, the job's memory given back, progress, and the overflow check
        ctx.executor.then(() -> {
            merge.close();
            ctx.openJobs.close(opened);
            ctx.progress.tensorDone();
            ctx.checkFinite(t, stats);
        });
    }
}
