package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.plan.TensorSource;

/**
 * The CPU engine, watched: the block buffers it hands out, which tensors' rows reached it in one of
 * them, and the jobs open at once (from a job's first handle to its last closed) with the heap they
 * hold ({@link TensorJob#heapBytes}). It may ask for positional reads into its blocks, as the GPU
 * engine does.
 */
final class WatchedEngine implements Backend {
    private final CpuBackend cpu;
    private final boolean readsIntoBlocks;
    /** The buffers {@link #allocateBlockBuffer} handed out, by identity. */
    final Set<ByteBuffer> blocks = Collections.synchronizedSet(Collections.newSetFromMap(new IdentityHashMap<>()));
    /** Tensors whose rows came to {@code mergeRows} in one of {@link #blocks}. */
    final Set<String> readIntoBlocks = ConcurrentHashMap.newKeySet();
    private final Map<TensorJob, Integer> handles = new IdentityHashMap<>();
    private long heldBytes;
    private int mostOpen;
    private long mostHeldBytesWithOthers;

    WatchedEngine(int threads, boolean readsIntoBlocks) {
        this.cpu = new CpuBackend(threads);
        this.readsIntoBlocks = readsIntoBlocks;
    }

    /** The most jobs open at once. */
    synchronized int mostOpen() {
        return mostOpen;
    }

    /** The most heap held by the open jobs at a moment when more than one was open. */
    synchronized long mostHeldBytesWithOthers() {
        return mostHeldBytesWithOthers;
    }

    private synchronized void opened(TensorJob job) {
        int n = handles.merge(job, 1, Integer::sum);
        if (n == 1) {
            heldBytes += TensorJob.heapBytes(job.out());
            mostOpen = Math.max(mostOpen, handles.size());
            if (handles.size() > 1) {
                mostHeldBytesWithOthers = Math.max(mostHeldBytesWithOthers, heldBytes);
            }
        }
    }

    private synchronized void closed(TensorJob job) {
        int n = handles.merge(job, -1, Integer::sum);
        if (n == 0) {
            handles.remove(job);
            heldBytes -= TensorJob.heapBytes(job.out());
        }
    }

    @Override
    public String describe() {
        return cpu.describe();
    }

    @Override
    public int parallelism() {
        return cpu.parallelism();
    }

    @Override
    public ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        ByteBuffer b = cpu.allocateBlockBuffer(sizeInBytes);
        blocks.add(b);
        return b;
    }

    @Override
    public boolean readsIntoBlockBuffers() {
        return readsIntoBlocks;
    }

    @Override
    public TensorMerge openMerge(TensorJob job) throws Exception {
        TensorMerge m = cpu.openMerge(job);
        opened(job);
        String name = job.out().name();
        return new TensorMerge() {
            @Override
            public TensorSource.Form input() {
                return m.input();
            }

            @Override
            public void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) throws Exception {
                m.columnSums(row0, rowCount, values, sumSq, sumErr);
            }

            @Override
            public void countSelection(long row0, int rowCount) throws Exception {
                m.countSelection(row0, rowCount);
            }

            @Override
            public void finishSelectionPass() throws Exception {
                m.finishSelectionPass();
            }

            @Override
            public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) throws Exception {
                if (blocks.contains(src)) {
                    readIntoBlocks.add(name);
                }
                m.mergeRows(row0, rowCount, src, dst, stats);
            }

            @Override
            public void mergeRowsOfSharedBlock(long row0, int rowCount, ByteBuffer src, Object block, ByteBuffer dst, BlockStats stats) throws Exception {
                if (blocks.contains(src)) {
                    readIntoBlocks.add(name);
                }
                m.mergeRowsOfSharedBlock(row0, rowCount, src, block, dst, stats);
            }

            @Override
            public void close() {
                m.close();
                closed(job);
            }
        };
    }

    @Override
    public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws Exception {
        return cpu.openDelta(name, base, tuned, rows, cols);
    }

    @Override
    public WeightDelta openCombination(DenseCombination dense, int rows, int cols) throws IOException {
        return cpu.openCombination(dense, rows, cols);
    }

    @Override
    public Requantization openRequantization(TensorJob job) throws Exception {
        Requantization r = cpu.openRequantization(job);
        opened(job);
        return new Requantization() {
            @Override
            public TensorSource.Form input() {
                return r.input();
            }

            @Override
            public int blockElements() {
                return r.blockElements();
            }

            @Override
            public int workingBytesPerElement() {
                return r.workingBytesPerElement();
            }

            @Override
            public long codesOffset(long firstElement) {
                return r.codesOffset(firstElement);
            }

            @Override
            public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception {
                return r.mergeRows(row0, rowCount, src, stats);
            }

            @Override
            public Result finish() throws Exception {
                return r.finish();
            }

            @Override
            public void close() {
                r.close();
                closed(job);
            }
        };
    }

    @Override
    public void close() {
        cpu.close();
    }
}
