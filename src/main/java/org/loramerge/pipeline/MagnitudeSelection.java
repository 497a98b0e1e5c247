package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Future;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;

/**
 * The passes of a combination that keeps each adapter's top D by magnitude (TIES,
 * magnitude_prune; docs/FORMATS.md §8) before any row of the tensor is merged: per pass, every
 * row block counted by the engine on the workers ({@link TensorMerge#countSelection}), then the
 * selection narrowed to the next digit, until the cut is known. Counts are integers, so the
 * result is the same whatever the thread count or block size. Reads no weights: the passes
 * recompute each adapter's ΔW from its factors.
 */
final class MagnitudeSelection {
    private MagnitudeSelection() {
    }

    static void compute(MergeContext ctx, TensorJob job, TensorMerge merge, int rowsPerBlock) throws Exception {
        while (job.needsSelection()) {
            List<Future<Void>> blocks = new ArrayList<>();
            for (long row0 = 0; row0 < job.rows(); row0 += rowsPerBlock) {
                long r0 = row0;
                int n = (int) Math.min(rowsPerBlock, job.rows() - row0);
                blocks.add(ctx.executor.submit(() -> {
                    merge.countSelection(r0, n);
                    return null;
                }));
            }
            for (Future<Void> f : blocks) {
                BlockExecutor.get(f);
            }
            merge.finishSelectionPass();
            job.dense().finishPass();
        }
    }
}
