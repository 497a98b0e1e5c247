package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.engine.LowRankTerm;

/** One low-rank term's factors in fp64 on the device: U, Vᵀ and their row norms (for the error bound). */
public final class DeviceFactors implements AutoCloseable {
    private final DeviceMemory u;
    private final DeviceMemory vt;
    private final DeviceMemory uNorm;
    private final DeviceMemory vNorm;
    private final int rank;
    private final double scale;

    /** Uploads {@code t}'s factors into memory from {@code pool} (newly allocated when it is null). */
    public DeviceFactors(LowRankTerm t, DevicePool pool) {
        rank = t.rank();
        scale = t.scale();
        u = upload(pool, t.u());
        vt = upload(pool, t.vt());
        uNorm = upload(pool, t.uNorms());
        vNorm = upload(pool, t.vNorms());
    }

    /** {@code a} on the device, in memory from {@code pool} (newly allocated when it is null). */
    static DeviceMemory upload(DevicePool pool, double[] a) {
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
