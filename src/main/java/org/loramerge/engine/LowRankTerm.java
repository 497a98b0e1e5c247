package org.loramerge.engine;

import java.io.IOException;
import org.loramerge.plan.Layout;
import org.loramerge.plan.TermSpec;

/**
 * A low-rank update ΔW = scale · U·Vᵀ of rows {@code [row0, row0 + rows)} of a matrix, with U
 * [rows, rank] and Vᵀ [rank, cols] held row-major in doubles; the matrix's other rows are left
 * alone (an MoE expert's term covers that expert's rows only; every other term covers all rows,
 * from row 0). Adapter values (F32, F16, BF16) are exact in double, so every product
 * U[i,k]·Vᵀ[k,j] is exact in double too. Row norms of U and V bound the rounding error of the fp64
 * dot products (Cauchy–Schwarz: Σ|U_ik V_jk| ≤ ‖U_i‖·‖V_j‖).
 */
public final class LowRankTerm {
    private final String module;
    private final double scale;
    private final int rank;
    private final long row0;
    private final int rows;
    private final int cols;
    private final double[] u;
    private final double[] vt;
    private final double[] uNorm;
    private final double[] vNorm;

    /** A term on every row of a matrix [rows, cols]. */
    public LowRankTerm(String module, double scale, int rank, int rows, int cols, double[] u, double[] vt) {
        this(module, scale, rank, 0, rows, cols, u, vt);
    }

    /** A term on rows {@code [row0, row0 + rows)} of a matrix with {@code cols} columns. */
    public LowRankTerm(String module, double scale, int rank, long row0, int rows, int cols, double[] u, double[] vt) {
        if (u.length != (long) rows * rank || vt.length != (long) rank * cols || row0 < 0) {
            throw new IllegalArgumentException("factor sizes do not match " + rows + "x" + rank + "x" + cols);
        }
        this.module = module;
        this.scale = scale;
        this.rank = rank;
        this.row0 = row0;
        this.rows = rows;
        this.cols = cols;
        this.u = u;
        this.vt = vt;
        this.uNorm = new double[rows];
        for (int i = 0; i < rows; i++) {
            double s = 0;
            for (int k = 0; k < rank; k++) {
                double x = u[i * rank + k];
                s += x * x;
            }
            uNorm[i] = Math.sqrt(s);
        }
        this.vNorm = new double[cols];
        for (int k = 0; k < rank; k++) {
            for (int j = 0; j < cols; j++) {
                double x = vt[k * cols + j];
                vNorm[j] += x * x;
            }
        }
        for (int j = 0; j < cols; j++) {
            vNorm[j] = Math.sqrt(vNorm[j]);
        }
    }

    /** The heap a term of {@code rank} on {@code rows} rows of a matrix with {@code cols} columns holds: U, Vᵀ and their row norms, in doubles. */
    public static long heapBytes(long rank, long rows, long cols) {
        return Double.BYTES * (rows * rank + rank * cols + rows + cols);
    }

    /** {@link #heapBytes(long, long, long)} of the term {@link #load} makes of {@code spec} for a weight viewed as [rows, cols], before it is loaded. */
    public static long heapBytes(TermSpec spec, long rows, long cols) {
        long covered = spec.slice() == null ? rows : spec.slice().rows();
        return heapBytes(spec.factorRank(), covered, spec.layout() == Layout.BIAS ? 1 : cols);
    }

    /** Loads the factors of {@code spec} for a weight viewed as [rows, cols] (see {@link TermSpec#factors}). */
    public static LowRankTerm load(TermSpec spec, long rows, long cols) throws IOException {
        double[][] f = spec.factors(rows, cols);
        int n = spec.layout() == Layout.BIAS ? 1 : Math.toIntExact(cols);
        int covered = spec.slice() == null ? Math.toIntExact(rows) : Math.toIntExact(spec.slice().rows());
        if (spec.firstRow() + covered > rows) {
            throw new IllegalArgumentException(spec.module() + ": rows " + spec.firstRow() + "+" + covered + " outside a matrix of " + rows);
        }
        return new LowRankTerm(spec.module(), spec.scale(), spec.factorRank(), spec.firstRow(), covered, n, f[0], f[1]);
    }

    /** The first row of the matrix the term covers. */
    public long row0() {
        return row0;
    }

    /** {@code row} of the matrix as a row of U, or -1 when the term does not cover it. */
    public int localRow(long row) {
        long i = row - row0;
        return i >= 0 && i < rows ? (int) i : -1;
    }

    public String module() {
        return module;
    }

    public double scale() {
        return scale;
    }

    public int rank() {
        return rank;
    }

    /** How many rows the term covers (the rows of U). */
    public int rows() {
        return rows;
    }

    public int cols() {
        return cols;
    }

    /** U [rows, rank], row-major. Not copied: do not modify. */
    public double[] u() {
        return u;
    }

    /** Vᵀ [rank, cols], row-major. Not copied: do not modify. */
    public double[] vt() {
        return vt;
    }

    public double uNorm(int row) {
        return uNorm[row];
    }

    /** ‖U_i‖ for every row. Not copied: do not modify. */
    public double[] uNorms() {
        return uNorm;
    }

    /** ‖V_j‖ for every column. Not copied: do not modify. */
    public double[] vNorms() {
        return vNorm;
    }
}
