package org.loramerge.engine.cuda;

import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import org.loramerge.engine.LowRankTerm;

/** One low-rank term's factors (or several terms' as one) in fp64 on the device: U, Vᵀ and their row norms (for the error bound). */
public final class DeviceFactors implements AutoCloseable {
    private final DeviceMemory u;
    private final DeviceMemory vt;
    private final DeviceMemory uNorm;
    private final DeviceMemory vNorm;
    private final int rank;
    private final double scale;
    private final boolean folded;

    /**
     * Several terms on the same rows (adapters combined by cat or task_arithmetic, or one expert's
     * terms from each of them) as one term of rank R = Σ r_t with scale 1, uploaded from
     * {@code pool}: U' = [s_1·U_1 | s_2·U_2 | ...], each product rounded once, and Vᵀ' = [Vᵀ_1;
     * Vᵀ_2; ...], so one DGEMM forms Σ s_t·U_t·Vᵀ_t. One term is uploaded as it is.
     *
     * <p>The add-and-round bound K·(|v| + 2·‖U'_i‖·‖V'_j‖) with K = 4·(R + 4)·u
     * ({@link org.loramerge.engine.TensorJob#boundK}, R the ranks on the row summed) covers the
     * folded product. Against the exact W + Σ_t s_t·Σ_k U_t,ik·V_t,kj, the computed v errs by at
     * most the roundings of s·U (u·Σ|s·U·V| ≤ u·(1 + u)·Σ_k|U'_ik·V'_kj|), of the R-step dot
     * product (γ_R·Σ_k|U'_ik·V'_kj|) and of the final add (u·|v|): (R + 1)·u·Σ|U'V|·(1 + O(u)) +
     * u·|v|, the same count as one term of rank R, where the rounding of s·U takes the place of
     * the rounding of the scale product. By Cauchy–Schwarz over the concatenated rank
     * Σ_k|U'_ik·V'_kj| ≤ ‖U'_i‖·‖V'_j‖, so K's 8·(R + 4)·u on it and 4·(R + 4)·u on |v| hold
     * with the margin of the one-term case. That needs every s·U and every product U'·V' to be
     * normal doubles, so their roundings are relative, and far from overflow ({@link #foldable}).
     *
     * <p>The folded U' is not the terms' U: the device's exact settling (kernels/exact.cuh), which
     * recomputes an element from the factors it holds, would settle W + U'·V' instead of the
     * exact sum. Folded factors are marked {@link #folded()}, and {@link DeviceWorker} leaves every
     * element their bound cannot decide to the host, which settles it from the job's own terms
     * ({@link HostSettle}), so the bytes are the CPU engine's.
     */
    public static DeviceFactors of(List<LowRankTerm> terms, DevicePool pool) {
        if (terms.size() == 1) {
            return new DeviceFactors(terms.get(0), pool);
        }
        return new DeviceFactors(fold(terms), pool, true);
    }

    /** The terms of {@link #of} as one term (scale 1, rank Σ r_t) on their rows. */
    static LowRankTerm fold(List<LowRankTerm> terms) {
        LowRankTerm first = terms.get(0);
        int rows = first.rows();
        int cols = first.cols();
        int rank = 0;
        for (LowRankTerm t : terms) {
            if (t.row0() != first.row0() || t.rows() != rows || t.cols() != cols) {
                throw new IllegalArgumentException("folded terms must cover the same rows: " + t.module() + " rows " + t.row0() + "+" + t.rows()
                        + ", " + first.module() + " rows " + first.row0() + "+" + rows);
            }
            rank += t.rank();
        }
        double[] u = new double[Math.multiplyExact(rows, rank)];
        double[] vt = new double[Math.multiplyExact(rank, cols)];
        int k0 = 0;
        for (LowRankTerm t : terms) {
            int r = t.rank();
            double s = t.scale();
            double[] tu = t.u();
            for (int i = 0; i < rows; i++) {
                for (int k = 0; k < r; k++) {
                    u[i * rank + k0 + k] = s * tu[i * r + k];
                }
            }
            System.arraycopy(t.vt(), 0, vt, k0 * cols, r * cols);
            k0 += r;
        }
        return new LowRankTerm("combined", 1.0, rank, first.row0(), rows, cols, u, vt);
    }

    /**
     * True when {@link #of} may fold {@code terms} under the add-and-round bound: one term, or
     * finite factors whose every non-zero s·U lies in [2^-500, 2^500) (its square, in ‖U'_i‖, is
     * a normal double) and, with every non-zero Vᵀ, multiplies to a product in [2^-1000, 2^900)
     * (the smallest with the smallest, the largest with the largest), so no rounding of the folded
     * product is subnormal (its error would be absolute, not relative) or near overflow. Anything
     * else (a weight of 1e-300, say) stays on the CPU engine.
     */
    static boolean foldable(List<LowRankTerm> terms) {
        if (terms.size() == 1) {
            return true;
        }
        double minU = Double.POSITIVE_INFINITY;
        double maxU = 0;
        double minV = Double.POSITIVE_INFINITY;
        double maxV = 0;
        for (LowRankTerm t : terms) {
            double s = t.scale();
            for (double x : t.u()) {
                double p = Math.abs(s * x);
                if (!Double.isFinite(p)) {
                    return false;
                }
                if (p != 0) {
                    minU = Math.min(minU, p);
                    maxU = Math.max(maxU, p);
                } else if (x != 0) {
                    return false; // s·U underflowed to zero
                }
            }
            for (double x : t.vt()) {
                double a = Math.abs(x);
                if (!Double.isFinite(a)) {
                    return false;
                }
                if (a != 0) {
                    minV = Math.min(minV, a);
                    maxV = Math.max(maxV, a);
                }
            }
        }
        if (maxU == 0 || maxV == 0) {
            return true; // every product is exactly zero
        }
        // exponents, so the test itself cannot underflow or overflow
        return minU >= 0x1p-500 && maxU < 0x1p500
                && Math.getExponent(minU) + Math.getExponent(minV) >= -1000 && Math.getExponent(maxU) + Math.getExponent(maxV) < 900;
    }

    /** Uploads {@code t}'s factors into memory from {@code pool} (newly allocated when it is null). */
    public DeviceFactors(LowRankTerm t, DevicePool pool) {
        this(t, pool, false);
    }

    private DeviceFactors(LowRankTerm t, DevicePool pool, boolean folded) {
        this.folded = folded;
        rank = t.rank();
        scale = t.scale();
        // what is taken goes back to the pool if a later upload fails (a device shared with other work may have no room left)
        Taken taken = new Taken(Taken::settleLegacyStream);
        try {
            u = taken.add(upload(pool, t.u()));
            vt = taken.add(upload(pool, t.vt()));
            uNorm = taken.add(upload(pool, t.uNorms()));
            vNorm = taken.add(upload(pool, t.vNorms()));
        } catch (RuntimeException | Error e) {
            taken.giveBack(e);
            throw e;
        }
    }

    /** {@code a} on the device, landed ({@link DeviceMemory#upload}), in memory from {@code pool} (newly allocated when it is null). */
    static DeviceMemory upload(DevicePool pool, double[] a) {
        return DeviceMemory.upload(pool, Pointer.to(a), (long) a.length * Sizeof.DOUBLE);
    }

    public int rank() {
        return rank;
    }

    public double scale() {
        return scale;
    }

    /**
     * True for several terms folded into one ({@link #of}): U holds s·U rounded, not the terms' U,
     * so the device must not settle elements exactly from it.
     */
    public boolean folded() {
        return folded;
    }

    DeviceMemory u() {
        return u;
    }

    DeviceMemory vt() {
        return vt;
    }

    DeviceMemory uNorm() {
        return uNorm;
    }

    DeviceMemory vNorm() {
        return vNorm;
    }

    @Override
    public void close() {
        u.close();
        vt.close();
        uNorm.close();
        vNorm.close();
    }
}
