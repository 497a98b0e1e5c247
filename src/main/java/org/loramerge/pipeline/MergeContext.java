package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.plan.OutputTensor;

/**
 * What every {@link TensorStrategy} of one merge shares: the engine, the ordered-block executor,
 * the output blocks in circulation, the shard being written, and what each tensor's merge found.
 * The strategies run on the writing thread; only the work they submit runs elsewhere.
 */
final class MergeContext {
    final Backend backend;
    final BlockExecutor executor;
    final MergeRunner.Options options;
    final Progress progress;
    /** Output blocks for dense tensors: one more than the executor's window, allocated by the backend (pinned on a GPU). */
    final BlockingQueue<ByteBuffer> buffers;
    /** Per written tensor, in plan order: what its merge found. */
    final Map<String, BlockStats> stats = new LinkedHashMap<>();
    /** Per requantized weight, in plan order: what survived of the adapter's change. */
    final List<MergeReport.Survival> survivals = new ArrayList<>();
    /** The shard the current tensors go into. */
    CheckpointWriter.Shard shard;

    MergeContext(Backend backend, MergeRunner.Options options, Progress progress) {
        this.backend = backend;
        this.options = options;
        this.progress = progress;
        this.executor = new BlockExecutor(backend.parallelism());
        this.buffers = new ArrayBlockingQueue<>(executor.window() + 1);
        for (int i = 0; i <= executor.window(); i++) {
            buffers.add(backend.allocateBlockBuffer(options.blockBytes()));
        }
    }

    /** A new record of what {@code t}'s merge finds. */
    BlockStats statsFor(OutputTensor t) {
        BlockStats s = new BlockStats();
        stats.put(t.name(), s);
        return s;
    }

    /**
     * Rows per block of a dense tensor: as many as fit a block of the larger of the source and
     * output rows.
     */
    int rowsPerBlock(OutputTensor t, long srcRowBytes, long outRowBytes) throws IOException {
        long rowBytes = Math.max(outRowBytes, srcRowBytes);
        if (rowBytes > options.blockBytes()) {
            throw new IOException(t.name() + ": one row of " + t.cols() + " elements is larger than the " + options.blockBytes()
                    + "-byte streaming block, which no Hugging Face architecture has; the merge cannot stream this tensor");
        }
        return (int) Math.max(1, options.blockBytes() / rowBytes);
    }

    /** Fails the merge when {@code t} overflowed to infinity or became NaN, unless the user allowed it. */
    void checkFinite(OutputTensor t, BlockStats s) throws NonFiniteException {
        if (!options.allowNonFinite() && (s.overflows() > 0 || s.nans() > 0)) {
            throw new NonFiniteException(t.name() + ": " + s.overflows() + " elements overflowed to infinity and "
                    + s.nans() + " became NaN in " + t.dtype() + "; merge to --dtype bf16 or f32, or pass --allow-overflow to keep them");
        }
    }
}
