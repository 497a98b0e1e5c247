package org.loramerge.engine.cuda;

import jcuda.Pointer;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import jcuda.runtime.cudaStream_t;

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

    /**
     * {@code bytes} of host memory {@code from} in new memory of {@code pool} (newly allocated when
     * it is null), landed when this returns ({@link #copyFromHost}); the memory is released again
     * when the copy fails.
     */
    public static DeviceMemory upload(DevicePool pool, Pointer from, long bytes) {
        DeviceMemory m = pool == null ? new DeviceMemory(bytes) : pool.take(bytes);
        try {
            m.copyFromHost(0, from, bytes);
            return m;
        } catch (RuntimeException e) {
            m.close();
            throw e;
        }
    }

    /**
     * Copies {@code bytes} of host memory {@code from} here from {@code byteOffset}, landed when this
     * returns. A copy from pageable memory (a Java array, a heap or an ordinary direct buffer) runs
     * on the legacy stream and may return before its DMA lands, and the workers' streams, which are
     * non-blocking, do not wait for that stream: so this waits for it, and a kernel queued afterwards
     * on any stream reads the copied bytes.
     */
    public void copyFromHost(long byteOffset, Pointer from, long bytes) {
        JCuda.cudaMemcpy(at(byteOffset), from, bytes, cudaMemcpyKind.cudaMemcpyHostToDevice);
        JCuda.cudaStreamSynchronize(new cudaStream_t());
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
