package org.loramerge.linalg;

import java.io.IOException;

/**
 * The passes of a randomized SVD ({@link RandomizedSvd}) over a matrix A [rows, cols] that lives
 * somewhere: in row blocks read from the host's checkpoints ({@link RandomizedSvd#truncated(RowBlocks,
 * int, RandomizedSvd.Options)}), or resident on a GPU. Each pass is one product with A followed by
 * the thin QR of the result, so an implementation keeps the tall product where it computed it and
 * hands back only its orthonormal basis (and R where asked). The small matrices (X, Q: rows or
 * cols × l) are on the host; the two products that turn the small SVD's vectors into A's may run
 * where the passes do.
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

    /** Q·C, Q a basis (rows or cols × l) and C l×k: the singular vectors from the small SVD's. On the host by default. */
    default Matrix basisTimes(Matrix q, Matrix c) {
        return q.multiply(c);
    }

    /** C·Qᵀ, C k×l and Q a basis (rows or cols × l): the transposed singular vectors. On the host by default. */
    default Matrix timesBasisTransposed(Matrix c, Matrix q) {
        return c.multiply(q.transpose());
    }
}
