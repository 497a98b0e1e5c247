package org.loramerge.engine.cuda;

import java.util.List;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.LowRankTerm;

/** One low-rank term's factors (or several terms' as one) in fp64 on the device: U, Vᵀ and their row norms (for the error bound). */
public final class DeviceFactors implements AutoCloseable {
    private final DeviceMemory u;
    private final DeviceMemory vt;
    private final DeviceMemory uNorm;
    private final DeviceMemory vNorm;
    private final int rank;
    private final double scale;

    /**
     * The factors of every term of a tensor as one term of rank Σ r_t with scale 1, uploaded from
     * {@code pool}: U' = [s_1·U_1 | s_2·U_2 | ...] (each product rounded once), Vᵀ' = [Vᵀ_1; Vᵀ_2; ...],
     * so one DGEMM forms Σ s_t·U_t·Vᵀ_t (several adapters combined by cat or task_arithmetic). The
     * add-and-round kernel's bound K·(|v| + 2·‖U'_i‖·‖V'_j‖) still holds: by Cauchy–Schwarz over the
     * concatenated rank ‖U'_i‖·‖V'_j‖ bounds Σ_t |s_t|·Σ_k |U_t,ik·V_t,kj| (up to the rounding of
     * s·U), the roundings of s·U add at most u of that, and K = 4·(Σ r_t + 4)·u (TensorJob) counts
     * every rank step. The elements the bound leaves undecided are settled exactly from the
     * original terms on the host, so the bytes are the CPU engine's.
     */
    public static DeviceFactors of(List<LowRankTerm> terms, DevicePool pool) {
        if (terms.size() == 1) {
            return new DeviceFactors(terms.get(0), pool);
        }
        int rows = terms.get(0).rows();
        int cols = terms.get(0).cols();
        int rank = 0;
        for (LowRankTerm t : terms) {
            rank += t.rank();
        }
        double[] u = new double[rows * rank];
        double[] vt = new double[rank * cols];
        int k0 = 0;
        for (LowRankTerm t : terms) {
            int r = t.rank();
            double s = t.scale();
            for (int i = 0; i < rows; i++) {
                for (int k = 0; k < r; k++) {
                    u[i * rank + k0 + k] = s * t.u()[i * r + k];
                }
            }
            System.arraycopy(t.vt(), 0, vt, k0 * cols, r * cols);
            k0 += r;
        }
        return new DeviceFactors(new LowRankTerm("combined", 1.0, rank, rows, cols, u, vt), pool);
    }

    /** Uploads {@code t}'s factors into memory from {@code pool} (newly allocated when it is null). */
    public DeviceFactors(LowRankTerm t, DevicePool pool) {
        rank = t.rank();
        scale = t.scale();
        u = upload(pool, t.u());
        vt = upload(pool, t.vt());
        uNorm = upload(pool, t.uNorms());
        vNorm = upload(pool, t.vNorms());
    }

    private static DeviceMemory upload(DevicePool pool, double[] a) {
        DeviceMemory d = Nf4Kernels.take(pool, (long) a.length * Sizeof.DOUBLE);
        JCuda.cudaMemcpy(d.pointer(), Pointer.to(a), (long) a.length * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyHostToDevice);
        return d;
    }

    public int rank() {
        return rank;
    }

    public double scale() {
        return scale;
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
