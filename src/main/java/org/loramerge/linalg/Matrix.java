package org.loramerge.linalg;

import java.io.IOException;
import java.util.Arrays;

/**
 * A dense matrix of doubles, row-major: element (i, j) is {@code data()[i·cols + j]}. Products
 * here are plain loops for the small matrices of the decompositions (factors, sketches, cores);
 * the large products of a pass over a big matrix are {@link Kernels}'. A Matrix is also its own
 * {@link RowBlocks}: one block, the whole array.
 */
public final class Matrix implements RowBlocks {
    private final int rows;
    private final int cols;
    private final double[] data;

    private Matrix(int rows, int cols, double[] data) {
        if (rows < 0 || cols < 0 || data.length != (long) rows * cols) {
            throw new IllegalArgumentException("a " + rows + "x" + cols + " matrix needs " + (long) rows * cols + " values, got " + data.length);
        }
        this.rows = rows;
        this.cols = cols;
        this.data = data;
    }

    /** A zero matrix. */
    public static Matrix zeros(int rows, int cols) {
        return new Matrix(rows, cols, new double[Math.multiplyExact(rows, cols)]);
    }

    /** The matrix whose row-major values are {@code data}; the array is used, not copied. */
    public static Matrix wrap(int rows, int cols, double[] data) {
        return new Matrix(rows, cols, data);
    }

    /** The n×n identity. */
    public static Matrix identity(int n) {
        Matrix m = zeros(n, n);
        for (int i = 0; i < n; i++) {
            m.data[i * n + i] = 1;
        }
        return m;
    }

    @Override
    public int rows() {
        return rows;
    }

    @Override
    public int cols() {
        return cols;
    }

    /** The row-major values, not copied. */
    public double[] data() {
        return data;
    }

    public double get(int i, int j) {
        return data[i * cols + j];
    }

    public void set(int i, int j, double v) {
        data[i * cols + j] = v;
    }

    @Override
    public void forEachBlock(Visitor visitor) throws IOException {
        visitor.block(0, rows, data);
    }

    public Matrix copy() {
        return new Matrix(rows, cols, data.clone());
    }

    public Matrix transpose() {
        Matrix t = zeros(cols, rows);
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                t.data[j * rows + i] = data[i * cols + j];
            }
        }
        return t;
    }

    /** this · b. */
    public Matrix multiply(Matrix b) {
        if (cols != b.rows) {
            throw new IllegalArgumentException("cannot multiply " + shape() + " by " + b.shape());
        }
        Matrix c = zeros(rows, b.cols);
        int n = b.cols;
        for (int i = 0; i < rows; i++) {
            for (int k = 0; k < cols; k++) {
                double a = data[i * cols + k];
                if (a == 0) {
                    continue;
                }
                int bo = k * n;
                int co = i * n;
                for (int j = 0; j < n; j++) {
                    c.data[co + j] += a * b.data[bo + j];
                }
            }
        }
        return c;
    }

    /** thisᵀ · b. */
    public Matrix transposeMultiply(Matrix b) {
        if (rows != b.rows) {
            throw new IllegalArgumentException("cannot multiply the transpose of " + shape() + " by " + b.shape());
        }
        Matrix c = zeros(cols, b.cols);
        int n = b.cols;
        for (int k = 0; k < rows; k++) {
            int bo = k * n;
            for (int i = 0; i < cols; i++) {
                double a = data[k * cols + i];
                if (a == 0) {
                    continue;
                }
                int co = i * n;
                for (int j = 0; j < n; j++) {
                    c.data[co + j] += a * b.data[bo + j];
                }
            }
        }
        return c;
    }

    /** The first {@code count} columns. */
    public Matrix leftColumns(int count) {
        if (count < 0 || count > cols) {
            throw new IllegalArgumentException("cannot take " + count + " columns of " + shape());
        }
        Matrix m = zeros(rows, count);
        for (int i = 0; i < rows; i++) {
            System.arraycopy(data, i * cols, m.data, i * count, count);
        }
        return m;
    }

    /** The first {@code count} rows. */
    public Matrix topRows(int count) {
        if (count < 0 || count > rows) {
            throw new IllegalArgumentException("cannot take " + count + " rows of " + shape());
        }
        return new Matrix(count, cols, Arrays.copyOf(data, count * cols));
    }

    /** Σ of the squares of all elements. */
    public double frobeniusSquared() {
        double s = 0;
        for (double v : data) {
            s += v * v;
        }
        return s;
    }

    public double frobeniusNorm() {
        return Math.sqrt(frobeniusSquared());
    }

    /** "[rows x cols]", for messages. */
    public String shape() {
        return "[" + rows + " x " + cols + "]";
    }

    @Override
    public String toString() {
        return "Matrix" + shape();
    }
}
