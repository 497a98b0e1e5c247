package org.loramerge.engine.cpu;

import java.nio.ByteBuffer;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;

/** The CPU engine: {@link CpuMerge} on as many threads as the pipeline drives. */
public final class CpuBackend implements Backend {
    private final int threads;
    private boolean closed;

    public CpuBackend(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be at least 1, got " + threads);
        }
        this.threads = threads;
    }

    @Override
    public String describe() {
        return "cpu (" + threads + (threads == 1 ? " thread)" : " threads)");
    }

    @Override
    public int parallelism() {
        return threads;
    }

    @Override
    public void mergeRows(TensorJob job, long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats);
    }

    @Override
    public void columnSums(TensorJob job, long row0, int rowCount, ByteBuffer src, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, src, sumSq, sumErr);
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("backend closed twice");
        }
        closed = true;
    }
}
