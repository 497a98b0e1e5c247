package org.loramerge.linalg;

import java.io.IOException;

/**
 * A dense matrix [rows, cols] that is read as consecutive blocks of rows, for matrices that are
 * not held in memory at once (a weight difference formed from two memory-mapped checkpoints). One
 * {@link #forEachBlock} call is one pass over the matrix; an algorithm that needs several passes
 * calls it several times, and every call must give the same values.
 */
public interface RowBlocks {
    /** Rows of the matrix. */
    int rows();

    /** Columns of the matrix. */
    int cols();

    /** Receives one block of rows. */
    interface Visitor {
        /**
         * Rows {@code [row0, row0 + rowCount)}, row-major in {@code values[0, rowCount·cols)}. The
         * array belongs to the caller and may be reused for the next block: read it, do not keep it.
         */
        void block(int row0, int rowCount, double[] values) throws IOException;
    }

    /** Hands every row to {@code visitor} once, in blocks of consecutive rows, top to bottom. */
    void forEachBlock(Visitor visitor) throws IOException;
}
