package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Future;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.format.MappedRegion;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;

/**
 * One output tensor of several merges of the same base in one pass ({@link MergeRunner#runShared}):
 * where every merge copies the same base tensor, each chunk is mapped once and written into every
 * output; where every merge merges rows of the same base tensor ({@link OutputTensor.Route#ROWS}),
 * each block of base rows is read once and merged by each merge's engine handle into its own output
 * block, written at its place in that merge's shard; anything else (requantized weights, DoRA's
 * column norms, the dense combinations' selection, different sources) is written by each merge's
 * own {@link TensorStrategy}. The blocks are those of {@link RowMerge} and {@link ByteCopy}, so every
 * output gets the bytes a merge of its own writes. The merges of a block run one after the other on
 * one worker thread ({@link TensorMerge#mergeRowsOfSharedBlock}), so on the GPU the block goes up once.
 */
final class SharedRows {
    /** Bytes per copy step, as {@link ByteCopy}'s. */
    private static final long CHUNK = 64L << 20;

    private SharedRows() {
    }

    /** Schedules tensor {@code ts.get(k)} of merge {@code k} into {@code ctxs.get(k)}, for every k; the contexts share one executor. */
    static void schedule(List<OutputTensor> ts, List<MergeContext> ctxs) throws Exception {
        OutputTensor first = ts.get(0);
        boolean sameSource = ts.stream().allMatch(t -> t.route() == first.route() && t.source() != null && t.source().equals(first.source()));
        if (sameSource && first.route() == OutputTensor.Route.BYTE_COPY) {
            copy(first, ts, ctxs);
            return;
        }
        if (sameSource && first.route() == OutputTensor.Route.ROWS && rows(ts, ctxs)) {
            return;
        }
        for (int k = 0; k < ts.size(); k++) {
            TensorStrategy.of(ts.get(k).route()).schedule(ts.get(k), ctxs.get(k));
        }
    }

    private static void copy(OutputTensor first, List<OutputTensor> ts, List<MergeContext> ctxs) throws Exception {
        MergeContext lead = ctxs.get(0);
        long size = first.sizeInBytes();
        List<CheckpointWriter.Shard> shards = new ArrayList<>();
        List<Long> offsets = new ArrayList<>();
        for (int k = 0; k < ts.size(); k++) {
            shards.add(ctxs.get(k).shard);
            offsets.add(ctxs.get(k).shard.offsetOf(ts.get(k).name()));
        }
        for (long off = 0; off < size; off += CHUNK) {
            long o = off;
            long n = Math.min(CHUNK, size - off);
            Future<Long> f = lead.executor.submit(() -> {
                try (MappedRegion r = first.source().file().map(first.source().info(), o, n)) {
                    ByteBuffer bytes = r.bytes();
                    for (int k = 0; k < shards.size(); k++) {
                        shards.get(k).writeAt(offsets.get(k) + o, bytes.duplicate().order(bytes.order()));
                    }
                }
                return n;
            });
            lead.executor.then(() -> {
                long written = BlockExecutor.get(f);
                for (CheckpointWriter.Shard s : shards) {
                    s.written(written);
                }
            });
        }
        lead.executor.then(lead.progress::tensorDone);
    }

    /** The shared row merge, or false (nothing scheduled) when the merges want the rows in different forms or need a selection pass. */
    private static boolean rows(List<OutputTensor> ts, List<MergeContext> ctxs) throws Exception {
        int n = ts.size();
        MergeContext lead = ctxs.get(0);
        long opened = lead.openJobs.open(ts, lead.executor);
        List<TensorJob> jobs = new ArrayList<>();
        for (OutputTensor t : ts) {
            TensorJob job = TensorJob.prepare(t);
            if (job.needsSelection()) {
                lead.openJobs.close(opened);
                return false;
            }
            jobs.add(job);
        }
        List<TensorMerge> merges = new ArrayList<>();
        try {
            for (int k = 0; k < n; k++) {
                merges.add(ctxs.get(k).backend.openMerge(jobs.get(k)));
            }
            for (TensorMerge m : merges) {
                if (m.input() != merges.get(0).input()) {
                    merges.forEach(TensorMerge::close);
                    lead.openJobs.close(opened);
                    return false;
                }
            }
        } catch (Exception | Error e) {
            merges.forEach(TensorMerge::close);
            throw e;
        }
        OutputTensor first = ts.get(0);
        List<BlockStats> stats = new ArrayList<>();
        List<CheckpointWriter.Shard> shards = new ArrayList<>();
        List<Long> offsets = new ArrayList<>();
        for (int k = 0; k < n; k++) {
            stats.add(ctxs.get(k).statsFor(ts.get(k)));
            shards.add(ctxs.get(k).shard);
            offsets.add(ctxs.get(k).shard.offsetOf(ts.get(k).name()));
        }
        int cols = jobs.get(0).cols();
        long outRowBytes = (long) cols * first.dtype().sizeInBytes();
        long srcRowBytes = (long) cols * first.source().dtype().sizeInBytes();
        int rowsPerBlock = lead.rowsPerBlock(first, srcRowBytes, outRowBytes);
        TensorSource.Form form = merges.get(0).input();
        TensorSource source = first.source();
        long rows = jobs.get(0).rows();
        for (long row0 = 0; row0 < rows; row0 += rowsPerBlock) {
            long r0 = row0;
            int count = (int) Math.min(rowsPerBlock, rows - row0);
            Future<Long> f = lead.executor.submit(() -> {
                try (TensorSource.Bytes src = source.readRows(form, r0, count, cols)) {
                    ByteBuffer in = src.bytes();
                    Object block = new Object(); // names this read: the GPU engine uploads it once for every merge
                    for (int k = 0; k < n; k++) {
                        ByteBuffer dst = lead.buffers.take();
                        try {
                            dst.clear();
                            merges.get(k).mergeRowsOfSharedBlock(r0, count, in.duplicate().order(in.order()), block, dst, stats.get(k));
                            dst.limit((int) (count * outRowBytes));
                            dst.position(0);
                            shards.get(k).writeAt(offsets.get(k) + r0 * outRowBytes, dst);
                        } finally {
                            lead.buffers.add(dst);
                        }
                    }
                    return count * outRowBytes;
                }
            });
            lead.executor.then(() -> {
                long written = BlockExecutor.get(f);
                for (CheckpointWriter.Shard s : shards) {
                    s.written(written);
                }
            });
        }
        lead.executor.then(() -> {
            merges.forEach(TensorMerge::close);
            lead.openJobs.close(opened);
            lead.progress.tensorDone();
            for (int k = 0; k < n; k++) {
                ctxs.get(k).checkFinite(ts.get(k), stats.get(k));
            }
        });
        return true;
    }
}
