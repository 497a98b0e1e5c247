package org.loramerge.engine.cuda;

import java.util.ArrayDeque;
import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;

/**
 * The dense ΔW buffers in device memory, within a fixed budget: extract's weights and combine's
 * dense Δ of the {@code _svd} methods. {@link #take} waits while the buffers handed out and the
 * size asked would exceed it, so however many weights the pipeline forms ahead, or modules it
 * combines at once, ΔW never holds more than {@code budgetBytes} of the device. Buffers given back
 * are kept for the next weight of the same size (a model has few shapes), because cudaFree waits
 * for the whole device and would stall the other weights' passes once per weight; a size not kept
 * makes room by freeing kept buffers of other sizes first, so the kept and the handed out together
 * stay within the budget too. An allocation the device refuses (it has less free memory than the
 * budget: another process, or the engine's other buffers) is tried once more after every kept
 * buffer is freed. extract's takers must ask in the order the weights are decomposed (one thread
 * forms the weights in order), or a later weight could hold the room an earlier one waits for;
 * combine's each hold one buffer while they form and decompose one module, waiting for nothing
 * else, so they may ask in any order. Generic over the buffer for tests without a device.
 *
 * @param <B> a device buffer
 */
final class DeltaArena<B> implements AutoCloseable {
    /** Makes and frees the buffers. */
    interface Allocator<B> {
        B allocate(long sizeInBytes);

        void free(B buffer);
    }

    private static final long MIB = 1L << 20;
    private final long budgetBytes;
    private final Allocator<B> allocator;
    private final Map<Long, ArrayDeque<B>> kept = new HashMap<>();
    private long heldBytes;
    private long keptBytes;
    private boolean closed;

    DeltaArena(long budgetBytes, Allocator<B> allocator) {
        this.budgetBytes = budgetBytes;
        this.allocator = allocator;
    }

    /** A buffer handed out; {@link #close} gives it back, once. */
    final class Lease implements AutoCloseable {
        private final B buffer;
        private final long sizeInBytes;
        private boolean closed;

        private Lease(B buffer, long sizeInBytes) {
            this.buffer = buffer;
            this.sizeInBytes = sizeInBytes;
        }

        B buffer() {
            if (closed) {
                throw new IllegalStateException("ΔW buffer used after it was given back");
            }
            return buffer;
        }

        @Override
        public void close() {
            if (closed) {
                throw new IllegalStateException("ΔW buffer given back twice");
            }
            closed = true;
            give(buffer, sizeInBytes);
        }
    }

    /** Whole MiB, so that buffers of nearby shapes fit each other's. */
    static long roundUp(long bytes) {
        return Math.max(1, (bytes + MIB - 1) / MIB) * MIB;
    }

    /** Whether a buffer of {@code bytes} fits the whole budget (else {@link #take} refuses it). */
    boolean fits(long bytes) {
        return roundUp(bytes) <= budgetBytes;
    }

    /**
     * A buffer of at least {@code bytes}, contents undefined, once the budget has room for it. A
     * new buffer is freed and allocated with the arena locked, so that two takers never both count
     * on the same room (the frees are rare: a weight of a new shape).
     *
     * @throws IllegalArgumentException when it is larger than the whole budget
     * @throws RuntimeException         the allocator's, when it fails again with no buffer kept
     */
    synchronized Lease take(long bytes) throws InterruptedException {
        long size = roundUp(bytes);
        if (!fits(bytes)) {
            throw new IllegalArgumentException("a ΔW of " + bytes + " bytes exceeds the device budget of " + budgetBytes);
        }
        while (!closed && heldBytes + size > budgetBytes) {
            wait();
        }
        if (closed) {
            throw new IllegalStateException("ΔW arena used after close");
        }
        ArrayDeque<B> same = kept.get(size);
        B reused = same == null ? null : same.poll();
        if (reused != null) {
            keptBytes -= size;
            heldBytes += size;
            return new Lease(reused, size);
        }
        Iterator<Map.Entry<Long, ArrayDeque<B>>> it = kept.entrySet().iterator();
        while (heldBytes + keptBytes + size > budgetBytes && it.hasNext()) {
            Map.Entry<Long, ArrayDeque<B>> e = it.next();
            while (heldBytes + keptBytes + size > budgetBytes && !e.getValue().isEmpty()) {
                allocator.free(e.getValue().peek());
                e.getValue().poll();
                keptBytes -= e.getKey();
            }
        }
        B fresh;
        try {
            fresh = allocator.allocate(size);
        } catch (RuntimeException e) {
            if (keptBytes == 0) {
                throw e;
            }
            freeKept();
            fresh = allocator.allocate(size);
        }
        heldBytes += size;
        return new Lease(fresh, size);
    }

    private void freeKept() {
        for (ArrayDeque<B> q : kept.values()) {
            while (!q.isEmpty()) {
                allocator.free(q.peek());
                q.poll();
            }
        }
        kept.clear();
        keptBytes = 0;
    }

    private synchronized void give(B buffer, long size) {
        heldBytes -= size;
        notifyAll();
        if (closed) {
            allocator.free(buffer);
            return;
        }
        kept.computeIfAbsent(size, k -> new ArrayDeque<>()).push(buffer);
        keptBytes += size;
    }

    /** Bytes handed out and not yet given back. */
    synchronized long heldBytes() {
        return heldBytes;
    }

    /** Bytes of device memory the arena has now: handed out and kept. */
    synchronized long deviceBytes() {
        return heldBytes + keptBytes;
    }

    /** Frees the kept buffers; those still handed out are freed when given back, and a taker still waiting fails. */
    @Override
    public synchronized void close() {
        if (closed) {
            throw new IllegalStateException("ΔW arena closed twice");
        }
        closed = true;
        notifyAll();
        freeKept();
    }
}
