package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.runtime.JCuda;

/** Device memory from cudaMalloc, freed exactly once by {@link #close()}. */
final class DeviceMemory implements AutoCloseable {
    private final Pointer pointer = new Pointer();
    private final long sizeInBytes;
    private boolean closed;

    DeviceMemory(long sizeInBytes) {
        this.sizeInBytes = Math.max(sizeInBytes, 8);
        JCuda.cudaMalloc(pointer, this.sizeInBytes);
    }

    Pointer pointer() {
        if (closed) {
            throw new IllegalStateException("device memory used after close");
        }
        return pointer;
    }

    Pointer at(long byteOffset) {
        return pointer().withByteOffset(byteOffset);
    }

    long sizeInBytes() {
        return sizeInBytes;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("device memory freed twice");
        }
        closed = true;
        JCuda.cudaFree(pointer);
    }
}
