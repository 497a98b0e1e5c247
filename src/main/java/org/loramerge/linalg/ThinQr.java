package org.loramerge.linalg;

/**
 * A thin QR decomposition A = Q·R of an m×l matrix, m ≥ l: Q m×l with orthonormal columns, R l×l
 * upper triangular. Made by {@link HouseholderQr} on the host or {@link CholeskyQr} where the tall
 * matrix lives on a device.
 */
public record ThinQr(Matrix q, Matrix r) {
    public ThinQr {
        if (q.cols() != r.rows() || r.rows() != r.cols()) {
            throw new IllegalArgumentException("Q " + q.shape() + " and R " + r.shape() + " are not a thin QR");
        }
    }

    /** The Householder QR of {@code a} (m ≥ l) on the host. */
    public static ThinQr householder(Matrix a) {
        HouseholderQr h = HouseholderQr.of(a);
        return new ThinQr(h.q(), h.r());
    }
}
