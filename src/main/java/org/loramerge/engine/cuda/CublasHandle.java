package org.loramerge.engine.cuda;

import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasHandle;

/** A cuBLAS handle bound to one stream, destroyed exactly once. */
final class CublasHandle implements AutoCloseable {
    private final cublasHandle handle = new cublasHandle();
    private boolean closed;

    CublasHandle(CudaStream stream) {
        JCublas2.cublasCreate(handle);
        JCublas2.cublasSetStream(handle, stream.runtime());
    }

    cublasHandle get() {
        if (closed) {
            throw new IllegalStateException("cuBLAS handle used after close");
        }
        return handle;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("cuBLAS handle destroyed twice");
        }
        closed = true;
        JCublas2.cublasDestroy(handle);
    }
}
