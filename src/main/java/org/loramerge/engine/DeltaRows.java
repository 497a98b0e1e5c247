package org.loramerge.engine;

import java.io.IOException;
import java.nio.ByteBuffer;
import org.loramerge.format.FloatFormat;
import org.loramerge.linalg.RowBlocks;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.TensorSource;

/**
 * ΔW = tuned − base of one weight as a matrix [rows, cols] read in row blocks from the two
 * memory-mapped checkpoints, never held whole. Each element is the difference of the two stored
 * values in fp64: exact whenever the two are within a factor 2^29 (F32) or 2^45 (BF16, F16) of each
 * other, which covers any fine-tune; otherwise correctly rounded. A first {@link #scan} checks
 * every value and sums ‖ΔW‖²; the passes of the SVD then read the same values again. The GPU
 * engine forms the same differences on the device (kernels/extract.cu) and keeps them there.
 */
public final class DeltaRows implements RowBlocks {
    /** About this many doubles per block (32 MB). */
    public static final int BLOCK_ELEMENTS = 4 << 20;

    private final String name;
    private final TensorSource base;
    private final TensorSource tuned;
    private final FloatFormat baseFormat;
    private final FloatFormat tunedFormat;
    private final int rows;
    private final int cols;
    private final int blockRows;

    public DeltaRows(String name, TensorSource base, TensorSource tuned, int rows, int cols) {
        this.name = name;
        this.base = base;
        this.tuned = tuned;
        this.baseFormat = FloatFormat.of(base.dtype());
        this.tunedFormat = FloatFormat.of(tuned.dtype());
        this.rows = rows;
        this.cols = cols;
        this.blockRows = Math.max(1, Math.min(rows, BLOCK_ELEMENTS / Math.max(1, cols)));
    }

    @Override
    public int rows() {
        return rows;
    }

    @Override
    public int cols() {
        return cols;
    }

    /** What a first pass found: ‖ΔW‖²_F and ‖W_base‖²_F. */
    public record Scan(double deltaSquared, double baseSquared) {
        public boolean isZero() {
            return deltaSquared == 0;
        }
    }

    /** One pass that checks every value of both models and sums ‖ΔW‖²; NaN or ±Inf in either is bad input. */
    public Scan scan() throws IOException, ExtractException {
        double delta = 0;
        double baseSq = 0;
        double[] b = new double[blockRows * cols];
        double[] t = new double[blockRows * cols];
        for (int r0 = 0; r0 < rows; r0 += blockRows) {
            int n = Math.min(blockRows, rows - r0);
            read(base, baseFormat, r0, n, b);
            read(tuned, tunedFormat, r0, n, t);
            for (int i = 0, end = n * cols; i < end; i++) {
                if (!Double.isFinite(b[i]) || !Double.isFinite(t[i])) {
                    boolean inBase = !Double.isFinite(b[i]);
                    throw new ExtractException(ExtractException.Reason.NON_FINITE, name + " holds " + (inBase ? b[i] : t[i]) + " at element ["
                            + (r0 + i / cols) + ", " + (i % cols) + "] in the " + (inBase ? "base, " : "tuned model, ") + (inBase ? base : tuned).file().path()
                            + "; a difference with NaN or infinity has no low-rank form: fix or re-export that checkpoint; nothing was written");
                }
                double d = t[i] - b[i];
                delta += d * d;
                baseSq += b[i] * b[i];
            }
        }
        return new Scan(delta, baseSq);
    }

    @Override
    public void forEachBlock(Visitor visitor) throws IOException {
        double[] b = new double[blockRows * cols];
        double[] t = new double[blockRows * cols];
        for (int r0 = 0; r0 < rows; r0 += blockRows) {
            int n = Math.min(blockRows, rows - r0);
            read(base, baseFormat, r0, n, b);
            read(tuned, tunedFormat, r0, n, t);
            for (int i = 0, end = n * cols; i < end; i++) {
                t[i] -= b[i];
            }
            visitor.block(r0, n, t);
        }
    }

    private void read(TensorSource src, FloatFormat f, int row0, int count, double[] out) throws IOException {
        try (TensorSource.Bytes r = src.readRows(TensorSource.Form.VALUES, row0, count, cols)) {
            ByteBuffer bytes = r.bytes();
            for (int i = 0, end = count * cols; i < end; i++) {
                out[i] = f.decode(f.bitsAt(bytes, i));
            }
        }
    }
}
