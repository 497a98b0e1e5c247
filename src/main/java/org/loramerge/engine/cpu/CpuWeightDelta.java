package org.loramerge.engine.cpu;

import java.io.IOException;
import org.loramerge.engine.DeltaRows;
import org.loramerge.engine.WeightDelta;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Residual;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.TensorSource;

/**
 * ΔW on the CPU: nothing held, every pass reads both weights again from the memory-mapped
 * checkpoints ({@link DeltaRows}); the SVD is {@link RandomizedSvd} over those row blocks, so a run
 * gives the same bits whatever the thread count.
 */
public final class CpuWeightDelta implements WeightDelta {
    private final DeltaRows rows;
    private final DeltaRows.Scan scan;
    private final int threads;
    private boolean closed;

    private CpuWeightDelta(DeltaRows rows, DeltaRows.Scan scan, int threads) {
        this.rows = rows;
        this.scan = scan;
        this.threads = threads;
    }

    /** Checks every value of both weights and sums ‖ΔW‖² (one pass); NaN or ±Inf is an {@link ExtractException}. */
    public static CpuWeightDelta open(String name, TensorSource base, TensorSource tuned, int rows, int cols, int threads)
            throws IOException, ExtractException {
        DeltaRows d = new DeltaRows(name, base, tuned, rows, cols);
        return new CpuWeightDelta(d, d.scan(), threads);
    }

    @Override
    public double deltaSquared() {
        return scan.deltaSquared();
    }

    @Override
    public RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException {
        return RandomizedSvd.truncated(rows, rank, options);
    }

    @Override
    public double residualSquared(Matrix u, Matrix vt) throws IOException {
        return Residual.squaredDistance(rows, u, vt, threads);
    }

    @Override
    public String device() {
        return "cpu";
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("weight delta closed twice");
        }
        closed = true;
    }
}
