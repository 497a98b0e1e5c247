package org.loramerge.linalg;

import java.io.IOException;

/**
 * The passes of a randomized SVD ({@link RandomizedSvd}) over a matrix A [rows, cols] that lives
 * somewhere: in row blocks read from the host's checkpoints ({@link RandomizedSvd#truncated(RowBlocks,
 * int, RandomizedSvd.Options)}), or resident on a GPU. Each pass is one product with A followed by
 * the thin QR of the result, so an implementation keeps the tall product where it computed it and
 * hands back only its orthonormal basis (and R where asked). The small matrices (X, Q: rows or
 * cols × l) are on the host.
 */
public interface Sketching {
    /** Rows of A. */
    int rows();

    /** Columns of A. */
    int cols();

    /** An orthonormal basis (rows × l) of the column span of A·X, X cols × l: the Q of its thin QR. */
    Matrix rangeBasis(Matrix x) throws IOException;

    /** An orthonormal basis (cols × l) of the column span of Aᵀ·Q, Q rows × l: the Q of its thin QR. */
    Matrix coRangeBasis(Matrix q) throws IOException;

    /** The thin QR of Aᵀ·Q (cols × l), Q rows × l. */
    ThinQr transposeTimesQr(Matrix q) throws IOException;
}
