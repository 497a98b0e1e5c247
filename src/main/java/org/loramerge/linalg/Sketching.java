package org.loramerge.linalg;

import java.io.IOException;

/**
 * The passes of a randomized SVD ({@link RandomizedSvd}) over a matrix A [rows, cols] that lives
 * somewhere: in row blocks read from the host's checkpoints ({@link RandomizedSvd#truncated(RowBlocks,
 * int, RandomizedSvd.Options)}), or resident on a GPU. Each pass is one product with A followed by
 * the thin QR of the result, so an implementation keeps the tall product where it computed it and
 * hands back only its orthonormal basis, of type {@code B}, kept where the passes run: the next pass
 * takes it from there, and only the small matrices (Ω, the l×l factors R and the small SVD's
 * vectors) and the singular vectors at the end cross to the host (Ω once per shape where the
 * passes keep it, {@link RandomizedSvd.TestMatrix}). Every basis handed out is given
 * back once through {@link #release}, and not used after.
 *
 * @param <B> a basis of l orthonormal columns where the passes keep it (a host {@link Matrix}, or
 *            the device's memory)
 */
public interface Sketching<B> {
    /** A thin QR whose Q stays where the passes run and whose R (l×l, upper triangular) is on the host. */
    record Qr<B>(B q, Matrix r) {
    }

    /** Rows of A. */
    int rows();

    /** Columns of A. */
    int cols();

    /**
     * An orthonormal basis (rows × l) of the column span of A·Ω, Ω the test matrix (cols × l) that
     * {@code omega} names: the Q of its thin QR.
     */
    B sketchBasis(RandomizedSvd.TestMatrix omega) throws IOException;

    /** An orthonormal basis (rows × l) of the column span of A·Z, Z a basis (cols × l) of these passes. */
    B rangeBasis(B z) throws IOException;

    /** An orthonormal basis (cols × l) of the column span of Aᵀ·Q, Q a basis (rows × l) of these passes. */
    default B coRangeBasis(B q) throws IOException {
        Qr<B> qr = transposeTimesQr(q);
        return qr.q();
    }

    /** The thin QR of Aᵀ·Q (cols × l), Q a basis (rows × l) of these passes. */
    Qr<B> transposeTimesQr(B q) throws IOException;

    /** Q·C on the host, Q a basis (rows or cols × l) and C l×k on the host: the singular vectors from the small SVD's. */
    Matrix basisTimes(B q, Matrix c);

    /** C·Qᵀ on the host, C k×l on the host and Q a basis (rows or cols × l): the transposed singular vectors. */
    Matrix timesBasisTransposed(Matrix c, B q);

    /** Gives back what {@code basis} holds; it is not used after. Nothing to do on the host by default. */
    default void release(B basis) {
    }
}
