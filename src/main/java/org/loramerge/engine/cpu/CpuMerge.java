package org.loramerge.engine.cpu;

import java.nio.ByteBuffer;
import java.util.Arrays;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.DoraSpec;

/**
 * The CPU merge of a block of rows, the reference the GPU engine must match bit for bit.
 *
 * <p>Each merged element is computed in fp64 with a rigorous bound e on its error; when the
 * interval [v − e, v + e] lies inside one rounding interval of the output format, round(v) is the
 * correctly rounded exact result. Otherwise (about one element in 10^8 for F32 output, practically
 * never for BF16) the element is recomputed exactly by {@link ExactMath}. Every engine that follows
 * this rule writes the same bits, whatever its summation order.
 */
public final class CpuMerge {
    private CpuMerge() {
    }

    /** Per-thread scratch arrays, grown on demand. */
    private static final ThreadLocal<double[][]> SCRATCH = ThreadLocal.withInitial(() -> new double[4][0]);

    private static double[][] scratch(int cols) {
        double[][] s = SCRATCH.get();
        if (s[0].length < cols) {
            for (int i = 0; i < s.length; i++) {
                s[i] = new double[cols];
            }
        }
        return s;
    }

    /**
     * Merges rows [row0, row0 + rowCount) of {@code job}: {@code src} holds those rows of the source
     * tensor, {@code dst} receives them in the output dtype (both little-endian, at index 0).
     * {@code deltas}, when not null, receives each merged element's change {@code v − w}, with v
     * the fp64 merged value before rounding and w the base value (0 where the base value is not
     * finite or a token row replaces the row), element (i, j) of the block at {@code i·cols + j}:
     * the ΔW of a requantization's survival report.
     */
    public static void mergeRows(TensorJob job, long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats, double[] deltas) {
        FloatFormat in = job.srcFormat();
        FloatFormat out = job.dstFormat();
        int cols = job.cols();
        double[][] s = scratch(cols);
        double[] w = s[0];
        double[] v = s[1];
        double[] e = s[2];
        int[] inBits = BITS_IN.get();
        int[] outBits = BITS_OUT.get();
        if (inBits.length < cols) {
            inBits = new int[cols];
            outBits = new int[cols];
            BITS_IN.set(inBits);
            BITS_OUT.set(outBits);
        }
        long fallbacks = 0;
        long rounded = 0;
        long overflows = 0;
        long nans = 0;
        for (int ii = 0; ii < rowCount; ii++) {
            long row = row0 + ii;
            int base = Math.multiplyExact(ii, cols);
            int tokenOffset = job.tokenRowOffset(row);
            if (tokenOffset >= 0) {
                double[] values = job.tokenValues();
                for (int j = 0; j < cols; j++) {
                    outBits[j] = out.encode(out.round(values[tokenOffset + j]));
                }
                putRow(out, dst, base, outBits, cols);
                continue;
            }
            getRow(in, src, base, inBits, cols);
            for (int j = 0; j < cols; j++) {
                w[j] = in.decode(inBits[j]);
            }
            boolean exactInput = computeRow(job, row, w, v, e);
            double factor = 1;
            double factorRel = 0;
            boolean rowUndecidable = false;
            if (job.doraAxis() == DoraSpec.Axis.ROW) {
                double sumSq = 0;
                double sumErr = 0;
                for (int j = 0; j < cols; j++) {
                    sumSq += v[j] * v[j];
                    sumErr += 2 * Math.abs(v[j]) * e[j];
                }
                double relS = (sumErr + (cols + 2) * TensorJob.U * sumSq) / sumSq;
                factor = job.magnitude()[(int) row] / Math.sqrt(sumSq);
                factorRel = relS / 2 + 3 * TensorJob.U;
                rowUndecidable = !(relS < 1e-3) || !Double.isFinite(factor);
            }
            double[] colFactor = job.columnFactor();
            double[] colRel = job.columnRel();
            for (int j = 0; j < cols; j++) {
                if (!Double.isFinite(w[j])) {
                    // a NaN or infinite base weight stays what it was
                    outBits[j] = in == out ? inBits[j] : out.encode(w[j]);
                    continue;
                }
                double val = v[j];
                double err = e[j];
                boolean undecidable = rowUndecidable;
                if (job.doraAxis() != null) {
                    double f = job.doraAxis() == DoraSpec.Axis.ROW ? factor : colFactor[j];
                    double rel = job.doraAxis() == DoraSpec.Axis.ROW ? factorRel : colRel[j];
                    val = f * v[j];
                    err = 2 * (Math.abs(f) * e[j] + Math.abs(val) * (rel + TensorJob.U));
                    undecidable |= !Double.isFinite(rel);
                }
                if (deltas != null) {
                    deltas[base + j] = val - w[j]; // reported, never used to decide a rounding
                }
                if (!undecidable && !exactInput) {
                    long fast = out.roundIfDecided(val, err);
                    if (fast >= 0) {
                        outBits[j] = (int) fast;
                        if (out.isNonFinite((int) fast)) {
                            overflows++;
                        }
                        continue;
                    }
                }
                double y = out.round(val);
                if (val == 0 && err == 0 && !undecidable) {
                    // an exactly zero delta on a zero weight keeps the weight's sign (kernels/rounding.cuh does the same)
                    y = w[j];
                } else if (Double.isFinite(val) && (undecidable || !exactInput && !decided(out, val, y, err))) {
                    // (a NaN or infinity from finite inputs, i.e. a NaN in the adapter, has nothing to decide)
                    ExactMath.Rounder rounder = ROUNDER.get();
                    y = rounder.round(job, w, row, j, out);
                    if (rounder.lastWasDecimal()) {
                        fallbacks++;
                    } else {
                        rounded++;
                    }
                }
                if (Double.isNaN(y)) {
                    nans++;
                } else if (Double.isInfinite(y)) {
                    overflows++;
                }
                outBits[j] = out.encode(y);
            }
            putRow(out, dst, base, outBits, cols);
        }
        stats.add(fallbacks, overflows, nans);
        stats.addExactlyRounded(rounded);
    }

    private static final ThreadLocal<int[]> BITS_IN = ThreadLocal.withInitial(() -> new int[0]);
    private static final ThreadLocal<int[]> BITS_OUT = ThreadLocal.withInitial(() -> new int[0]);

    /** Reads {@code cols} elements starting at element {@code base} of a little-endian buffer as raw bits. */
    static void getRow(FloatFormat f, ByteBuffer b, int base, int[] bits, int cols) {
        if (f == FloatFormat.F32) {
            for (int j = 0; j < cols; j++) {
                bits[j] = b.getInt((base + j) << 2);
            }
        } else {
            for (int j = 0; j < cols; j++) {
                bits[j] = b.getShort((base + j) << 1) & 0xFFFF;
            }
        }
    }

    private static void putRow(FloatFormat f, ByteBuffer b, int base, int[] bits, int cols) {
        if (f == FloatFormat.F32) {
            for (int j = 0; j < cols; j++) {
                b.putInt((base + j) << 2, bits[j]);
            }
        } else {
            for (int j = 0; j < cols; j++) {
                b.putShort((base + j) << 1, (short) bits[j]);
            }
        }
    }

    /** True if every value within err of val rounds to y. */
    static boolean decided(FloatFormat out, double val, double y, double err) {
        if (Double.isInfinite(y) || y == 0) {
            // near overflow or zero (whose sign matters) compare the two ends of the interval, each
            // widened by one double step against the rounding of val - err and val + err themselves
            double low = out.round(Math.nextDown(val - err));
            double high = out.round(Math.nextUp(val + err));
            return Double.doubleToRawLongBits(low) == Double.doubleToRawLongBits(high);
        }
        // the rounding interval of y reaches half an ulp to each side, except below a power of two,
        // where the spacing halves; |val - y| is exact (Sterbenz)
        double half = 0.5 * out.ulp(y);
        boolean powerOfTwo = (Double.doubleToRawLongBits(y) & 0x000F_FFFF_FFFF_FFFFL) == 0;
        if (powerOfTwo && Math.abs(val) < Math.abs(y)) {
            half *= 0.5;
        }
        return Math.abs(val - y) + err < half;
    }

    private static final ThreadLocal<ExactMath.Rounder> ROUNDER = ThreadLocal.withInitial(ExactMath.Rounder::new);

    /**
     * v = w + Σ s·U_i·Vᵀ (or w + Δ of a dense combination) for one row, with e its error bound.
     * Returns true when v is exact (no term covers the row).
     */
    static boolean computeRow(TensorJob job, long row, double[] w, double[] v, double[] e) {
        int cols = job.cols();
        if (job.dense() != null) {
            // W + Δ with Δ the combination's float64 delta: one float64 addition, error at most u·|v|
            double[] d = SCRATCH.get()[3];
            job.dense().deltaRow(row, d);
            for (int j = 0; j < cols; j++) {
                if (d[j] == 0) {
                    v[j] = w[j];
                    e[j] = 0; // keeps W's bits
                } else {
                    v[j] = w[j] + d[j];
                    // never 0 for a non-zero Δ, so a sum that cancels to zero is settled exactly (as +0)
                    e[j] = Math.max(2 * TensorJob.U * Math.abs(v[j]), Double.MIN_VALUE);
                }
            }
            return false;
        }
        System.arraycopy(w, 0, v, 0, cols);
        Arrays.fill(e, 0, cols, 0.0);
        double[] d = SCRATCH.get()[3];
        boolean covered = false;
        for (LowRankTerm t : job.terms()) {
            int i = t.localRow(row);
            if (i < 0) {
                continue; // an expert's term, on another expert's rows
            }
            covered = true;
            int r = t.rank();
            double[] u = t.u();
            double[] vt = t.vt();
            Arrays.fill(d, 0, cols, 0.0);
            for (int k = 0; k < r; k++) {
                double uk = u[i * r + k];
                if (uk == 0) {
                    continue;
                }
                int off = k * cols;
                for (int j = 0; j < cols; j++) {
                    d[j] += uk * vt[off + j];
                }
            }
            double s = t.scale();
            double bound = 2 * Math.abs(s) * t.uNorm(i);
            double[] vNorm = t.vNorms();
            for (int j = 0; j < cols; j++) {
                v[j] += s * d[j];
                e[j] += bound * vNorm[j];
            }
        }
        if (!covered) {
            return true;
        }
        double k = job.boundK();
        for (int j = 0; j < cols; j++) {
            e[j] = k * (Math.abs(v[j]) + e[j]);
        }
        return false;
    }

    /**
     * First pass of a column-axis DoRA tensor: adds Σ v² and Σ 2|v|·e of these rows to the
     * per-column accumulators.
     */
    public static void columnSums(TensorJob job, long row0, int rowCount, ByteBuffer src, double[] sumSq, double[] sumErr) {
        FloatFormat in = job.srcFormat();
        int cols = job.cols();
        double[][] s = scratch(cols);
        double[] w = s[0];
        double[] v = s[1];
        double[] e = s[2];
        for (int ii = 0; ii < rowCount; ii++) {
            long base = (long) ii * cols;
            for (int j = 0; j < cols; j++) {
                w[j] = in.decode(in.bitsAt(src, base + j));
            }
            computeRow(job, row0 + ii, w, v, e);
            for (int j = 0; j < cols; j++) {
                sumSq[j] += v[j] * v[j];
                sumErr[j] += 2 * Math.abs(v[j]) * e[j];
            }
        }
    }
}
