package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
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
 * The CPU engine behind a test double: every method a {@link Backend} must have goes to {@link #cpu};
 * the interface's defaults stay the interface's. A double overrides what it watches or breaks.
 */
abstract class ForwardingBackend implements Backend {
    final CpuBackend cpu;

    ForwardingBackend(int threads) {
        this.cpu = new CpuBackend(threads);
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
    public TensorMerge openMerge(TensorJob job) throws Exception {
        return cpu.openMerge(job);
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
        return cpu.openRequantization(job);
    }

    @Override
    public void close() {
        cpu.close();
    }

    /**
     * A handle that passes every method a {@link TensorMerge} must have to {@code m}; the interface's
     * defaults stay the interface's (so a default that calls {@link #mergeRows} reaches an override of it).
     */
    static class ForwardingMerge implements TensorMerge {
        final TensorMerge m;

        ForwardingMerge(TensorMerge m) {
            this.m = m;
        }

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
        public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) throws Exception {
            m.mergeRows(row0, rowCount, src, dst, stats);
        }

        @Override
        public void close() {
            m.close();
        }
    }
}
