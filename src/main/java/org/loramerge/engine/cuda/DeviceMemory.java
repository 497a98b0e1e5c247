package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.runtime.JCuda;

/**
 * Device memory from cudaMalloc, released exactly once by {@link #close()}: freed, or handed back
 * to the {@link DevicePool} it came from.
 */
public final class DeviceMemory implements AutoCloseable {
    private final Pointer pointer;
    private final long sizeInBytes;
    private final DevicePool pool;
    private boolean closed;

    public DeviceMemory(long sizeInBytes) {
        this.pointer = new Pointer();
        this.sizeInBytes = Math.max(sizeInBytes, 8);
        this.pool = null;
        JCuda.cudaMalloc(pointer, this.sizeInBytes);
    }

    /** Memory of a pool: {@code pointer} holds {@code sizeInBytes} and goes back to {@code pool} on close. */
    DeviceMemory(Pointer pointer, long sizeInBytes, DevicePool pool) {
        this.pointer = pointer;
        this.sizeInBytes = sizeInBytes;
        this.pool = pool;
    }

    public Pointer pointer() {
        if (closed) {
            throw new IllegalStateException("device memory used after close");
        }
        return pointer;
    }

    public Pointer at(long byteOffset) {
        return pointer().withByteOffset(byteOffset);
    }

    public long sizeInBytes() {
        return sizeInBytes;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("device memory freed twice");
        }
        closed = true;
        if (pool != null) {
            pool.give(pointer, sizeInBytes);
        } else {
            JCuda.cudaFree(pointer);
        }
    }
}
