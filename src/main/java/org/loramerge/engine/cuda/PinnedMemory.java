package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jcuda.Pointer;
import jcuda.runtime.JCuda;

/** Page-locked host memory from cudaHostAlloc, so copies to and from the device run at full PCIe speed. */
public final class PinnedMemory implements AutoCloseable {
    private final Pointer pointer = new Pointer();
    private final long sizeInBytes;
    private final ByteBuffer buffer;
    private boolean closed;

    public PinnedMemory(long sizeInBytes) {
        this.sizeInBytes = Math.max(sizeInBytes, 8);
        JCuda.cudaHostAlloc(pointer, this.sizeInBytes, JCuda.cudaHostAllocDefault);
        this.buffer = pointer.getByteBuffer(0, this.sizeInBytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    public Pointer pointer() {
        if (closed) {
            throw new IllegalStateException("pinned memory used after close");
        }
        return pointer;
    }

    /** A view of the whole buffer, little-endian, positioned at 0. */
    public ByteBuffer buffer() {
        if (closed) {
            throw new IllegalStateException("pinned memory used after close");
        }
        return buffer.duplicate().order(ByteOrder.LITTLE_ENDIAN);
    }

    public long sizeInBytes() {
        return sizeInBytes;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("pinned memory freed twice");
        }
        closed = true;
        JCuda.cudaFreeHost(pointer);
    }
}
