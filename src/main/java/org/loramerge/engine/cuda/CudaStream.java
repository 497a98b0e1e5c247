package org.loramerge.engine.cuda;

import jcuda.driver.CUstream;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaStream_t;

/** A CUDA stream, destroyed exactly once. */
public final class CudaStream implements AutoCloseable {
    private final cudaStream_t stream = new cudaStream_t();
    private final CUstream driverStream;
    private boolean closed;

    public CudaStream() {
        JCuda.cudaStreamCreateWithFlags(stream, JCuda.cudaStreamNonBlocking);
        driverStream = new CUstream(stream);
    }

    public cudaStream_t runtime() {
        return stream;
    }

    public CUstream driver() {
        return driverStream;
    }

    public void synchronize() {
        JCuda.cudaStreamSynchronize(stream);
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("stream destroyed twice");
        }
        closed = true;
        JCuda.cudaStreamDestroy(stream);
    }
}
