package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.plan.TensorSource;

/**
 * The CPU engine, watched: the block buffers it hands out, which tensors' rows reached it in one of
 * them, and the jobs open at once (from a job's first handle to its last closed) with the heap they
 * hold ({@link TensorJob#heapBytes}). It may ask for positional reads into its blocks, as the GPU
 * engine does.
 */
final class WatchedEngine extends ForwardingBackend {
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
        super(threads);
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
        TensorMerge opening = cpu.openMerge(job);
        opened(job);
        String name = job.out().name();
        return new ForwardingMerge(opening) {
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

}
