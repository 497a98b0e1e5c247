package org.loramerge.engine.cuda;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Map;
import jcuda.Pointer;
import jcuda.runtime.JCuda;

/**
 * Device buffers kept for reuse by the tensors that follow. A merge allocates a few buffers per
 * tensor (factors, scales, a requantized weight's codes), of the few sizes a model's shapes
 * give; cudaFree waits for the whole device, which would stall the other streams' blocks once
 * per tensor. Sizes are rounded up (powers of two to 1 MiB, then whole MiB) so that buffers fit
 * more than one shape. The caller must be done with a buffer on the device (its stream
 * synchronized) before closing it. Freed for good by {@link #close}.
 */
public final class DevicePool implements AutoCloseable {
    private static final long MIB = 1L << 20;
    private final Map<Long, ArrayDeque<Pointer>> free = new HashMap<>();
    private boolean closed;
    private long outstanding;

    static long roundUp(long bytes) {
        long b = Math.max(bytes, 256);
        return b <= MIB ? Long.highestOneBit(b - 1) << 1 : (b + MIB - 1) / MIB * MIB;
    }

    /** At least {@code bytes} of device memory; contents undefined. */
    public synchronized DeviceMemory take(long bytes) {
        if (closed) {
            throw new IllegalStateException("device pool used after close");
        }
        long size = roundUp(bytes);
        ArrayDeque<Pointer> q = free.get(size);
        Pointer p = q == null ? null : q.poll();
        if (p == null) {
            p = new Pointer();
            JCuda.cudaMalloc(p, size);
        }
        outstanding++;
        return new DeviceMemory(p, size, this);
    }

    /** Buffers taken and not given back yet: what the GPU tests check for leaks. */
    synchronized long outstanding() {
        return outstanding;
    }

    synchronized void give(Pointer p, long size) {
        outstanding--;
        if (closed) {
            JCuda.cudaFree(p);
            return;
        }
        free.computeIfAbsent(size, k -> new ArrayDeque<>()).push(p);
    }

    /** Frees every buffer handed back; buffers still out are freed when they come back. */
    @Override
    public synchronized void close() {
        closed = true;
        for (ArrayDeque<Pointer> q : free.values()) {
            for (Pointer p : q) {
                JCuda.cudaFree(p);
            }
        }
        free.clear();
    }
}
