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
import org.loramerge.engine.Stages;
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
    /** Output blocks for dense tensors: one per worker and a spare, allocated by the backend (pinned on a GPU). */
    final BlockingQueue<ByteBuffer> buffers;
    /** Per written tensor, in plan order: what its merge found. */
    final Map<String, BlockStats> stats = new LinkedHashMap<>();
    /** Per requantized weight, in plan order: what survived of the adapter's change. */
    final List<MergeReport.Survival> survivals = new ArrayList<>();
    /**
     * With positional reads ({@link #preadReads}): blocks a worker reads a dense
     * tensor's rows into, allocated by the backend as the output blocks are, one per worker and a
     * spare; else empty.
     */
    final BlockingQueue<ByteBuffer> inputBuffers;
    /** Whether dense rows are read by positional reads into {@link #inputBuffers} (the options' choice, else the engine's). */
    final boolean preadReads;
    /** Where the time goes, stage by stage. */
    final Stages stages;
    /** The shard the current tensors go into. */
    CheckpointWriter.Shard shard;

    /** Why fewer threads run than the engine asked for, or null. */
    final String threadNote;
    /** The heap the open tensors' jobs hold, within {@link #jobBudget}. */
    final OpenJobs openJobs;

    MergeContext(Backend backend, MergeRunner.Options options, Progress progress) {
        this(backend, options, progress, Runtime.getRuntime().maxMemory());
    }

    /** A context for a JVM that may use {@code maxMemory} bytes. */
    MergeContext(Backend backend, MergeRunner.Options options, Progress progress, long maxMemory) {
        this.backend = backend;
        this.options = options;
        this.progress = progress;
        int threads = threadsFor(backend.parallelism(), options.blockBytes(), maxMemory);
        this.threadNote = threads < backend.parallelism()
                ? backend.parallelism() + " threads asked for, " + threads + " run: each holds about " + (MEMORY_PER_THREAD * options.blockBytes() >> 20)
                        + " MiB of blocks and the JVM may use " + (maxMemory >> 20)
                        + " MiB (raise it with LORAMERGE_JAVA_OPTS=-Xmx...)"
                : null;
        this.openJobs = new OpenJobs(jobBudget(threads, options.blockBytes(), maxMemory));
        this.stages = new Stages();
        // a worker holds one output block from reading its rows to writing them: one each, and one spare
        // (and as many input blocks when it reads into them); made before the workers start, so that
        // a failure leaves no threads behind
        this.buffers = new ArrayBlockingQueue<>(threads + 1);
        this.inputBuffers = new ArrayBlockingQueue<>(threads + 1);
        this.preadReads = options.preadReads() != null ? options.preadReads() : backend.readsIntoBlockBuffers();
        List<ByteBuffer> made = backend.allocateBlockBuffers(preadReads ? 2 * (threads + 1) : threads + 1, options.blockBytes());
        buffers.addAll(made.subList(0, threads + 1));
        inputBuffers.addAll(made.subList(threads + 1, made.size()));
        this.executor = new BlockExecutor(threads, options.windowPerThread(), stages);
    }

    /**
     * Another merge's context sharing {@code lead}'s engine, executor, output blocks and progress (one
     * pass writing several outputs: {@link MergeRunner#runShared}); its own options, shard and findings.
     * The input blocks are shared too, and used: rows that every merge changes alike are mapped once
     * ({@link SharedRows}), but a tensor that only some of them change, or change otherwise (DoRA, a
     * selection), is written by each merge's own {@link RowMerge}, which reads into them.
     */
    MergeContext(MergeContext lead, MergeRunner.Options options) {
        this.backend = lead.backend;
        this.options = options;
        this.progress = lead.progress;
        this.threadNote = lead.threadNote;
        this.openJobs = lead.openJobs;
        this.executor = lead.executor;
        this.buffers = lead.buffers;
        this.inputBuffers = lead.inputBuffers;
        this.preadReads = lead.preadReads;
        this.stages = lead.stages;
    }

    /**
     * Streaming blocks a worker thread may hold at once, with their working copies: its output
     * block (off the heap), the source rows it decodes, and for a requantized weight the block's
     * merged values and ΔW in doubles (8 bytes an element, so as much as the block again).
     */
    static final int MEMORY_PER_THREAD = 4;

    /**
     * The worker threads memory allows: as many as the engine asks for, but no more than fit in the
     * JVM's memory ({@code maxMemory}, which also bounds direct buffers unless set apart) at
     * {@link #MEMORY_PER_THREAD} blocks each; at least one. A machine with many cores and the
     * launcher's heap cap merges with fewer threads instead of running out of memory.
     */
    static int threadsFor(int asked, int blockBytes, long maxMemory) {
        long fit = maxMemory / ((long) MEMORY_PER_THREAD * blockBytes);
        return (int) Math.max(1, Math.min(asked, fit));
    }

    /**
     * The heap the open tensors' jobs ({@link OpenJobs}) may hold: half of what {@code threads}
     * workers' blocks leave of {@code maxMemory}, the other half for everything else (the plan, a
     * job's temporaries while it is loaded, the collector's headroom); at least a sixteenth of
     * {@code maxMemory}, so that a machine with many cores, whose blocks' estimate fills the heap
     * (64 threads at the launcher's 2 GB), still has tensors open side by side rather than one at a
     * time (a tensor larger than the budget still runs alone).
     */
    static long jobBudget(int threads, int blockBytes, long maxMemory) {
        return Math.max(maxMemory / 16, Math.max(0, maxMemory - (long) threads * MEMORY_PER_THREAD * blockBytes) / 2);
    }

    /** A new record of what {@code t}'s merge finds. */
    BlockStats statsFor(OutputTensor t) {
        BlockStats s = new BlockStats(stages);
        stats.put(t.name(), s);
        return s;
    }

    /** A free output block, the wait for it counted ({@link Stages.Stage#BUFFER_WAIT}); hand it back to {@link #buffers}. */
    ByteBuffer takeBuffer() throws InterruptedException {
        long t0 = System.nanoTime();
        ByteBuffer b = buffers.take();
        stages.since(Stages.Stage.BUFFER_WAIT, t0, 0);
        return b;
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
