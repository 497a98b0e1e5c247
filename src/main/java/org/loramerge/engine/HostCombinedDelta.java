package org.loramerge.engine;

import java.io.IOException;
import java.io.UncheckedIOException;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Residual;
import org.loramerge.linalg.RowBlocks;

/**
 * The dense combination Δ [rows, cols] of one of PEFT's {@code _svd} methods ({@link
 * DenseCombination}, λ = 1) on the host, as the CPU engine decomposes it: opening runs the
 * selection's passes ({@link DenseCombination#selectAll}), and every pass of the SVD recomputes
 * Δ's rows from the adapters' factors, 64 rows at a time, so Δ is never held whole. The SVD is
 * {@link RandomizedSvd} over those row blocks.
 */
public final class HostCombinedDelta implements WeightDelta, RowBlocks {
    private static final int BLOCK_ROWS = 64;

    private final DenseCombination dense;
    private final int rows;
    private final int cols;
    private double deltaSquared = Double.NaN;
    private boolean closed;

    private HostCombinedDelta(DenseCombination dense, int rows, int cols) {
        this.dense = dense;
        this.rows = rows;
        this.cols = cols;
    }

    /** Δ of {@code dense}, a tensor [rows, cols], its top-D selections made here. The CPU engine's {@link CombinationDeltas}. */
    public static HostCombinedDelta open(DenseCombination dense, int rows, int cols) {
        if (dense.cols() != cols) {
            throw new IllegalArgumentException(dense.spec().name() + ": a combination of " + dense.cols() + " columns opened as " + cols);
        }
        dense.selectAll(rows);
        return new HostCombinedDelta(dense, rows, cols);
    }

    @Override
    public int rows() {
        return rows;
    }

    @Override
    public int cols() {
        return cols;
    }

    @Override
    public void forEachBlock(Visitor visitor) throws IOException {
        double[] values = new double[BLOCK_ROWS * cols];
        double[] row = new double[cols];
        for (int r0 = 0; r0 < rows; r0 += BLOCK_ROWS) {
            int n = Math.min(BLOCK_ROWS, rows - r0);
            for (int i = 0; i < n; i++) {
                dense.deltaRow(r0 + i, row);
                System.arraycopy(row, 0, values, i * cols, cols);
            }
            visitor.block(r0, n, values);
        }
    }

    /** ‖Δ‖²_F, summed over one pass of its own on the first call (the SVD does not need it). */
    @Override
    public double deltaSquared() {
        if (Double.isNaN(deltaSquared)) {
            double[] sum = new double[1];
            try {
                forEachBlock((row0, rowCount, values) -> {
                    double s = sum[0];
                    for (int i = 0, end = rowCount * cols; i < end; i++) {
                        s += values[i] * values[i];
                    }
                    sum[0] = s;
                });
            } catch (IOException e) {
                throw new UncheckedIOException(e); // the rows come from factors in memory: no read fails here
            }
            deltaSquared = sum[0];
        }
        return deltaSquared;
    }

    @Override
    public RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException {
        return RandomizedSvd.truncated(this, rank, options);
    }

    @Override
    public double residualSquared(Matrix u, Matrix vt) throws IOException {
        return Residual.squaredDistance(this, u, vt, 1);
    }

    @Override
    public String device() {
        return "cpu";
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("combined delta closed twice");
        }
        closed = true;
    }
}
