package org.loramerge.engine.cpu;

import java.io.IOException;
import org.loramerge.engine.Backend;
import org.loramerge.engine.CombinationDeltas;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.HostCombinedDelta;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.WeightDelta;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.TensorSource;

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
    public TensorMerge openMerge(TensorJob job) {
        return new CpuTensorMerge(job);
    }

    @Override
    public Requantization openRequantization(TensorJob job) {
        return new CpuRequantization(job);
    }

    @Override
    public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws IOException, ExtractException {
        return CpuWeightDelta.open(name, base, tuned, rows, cols, threads);
    }

    /** Δ recomputed on the host for every pass ({@link CombinationDeltas#HOST}), as {@code TensorJob.prepare} without a backend does. */
    @Override
    public WeightDelta openCombination(DenseCombination dense, int rows, int cols) {
        return HostCombinedDelta.open(dense, rows, cols);
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("backend closed twice");
        }
        closed = true;
    }
}
