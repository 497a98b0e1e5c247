package org.loramerge.engine.cuda;

import java.util.ArrayList;
import java.util.List;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaStream_t;

/**
 * What a constructor takes of the device one step after another (buffers, factors, a
 * dequantizer), given back together when a later step fails, so that the failure leaves nothing
 * held ({@link #giveBack}): first {@code settle} runs (the copies already queued into those buffers
 * must land before the memory goes back to its pool and is handed out again), then every resource
 * is closed, the last taken first. Whatever fails on the way is added to the original failure as
 * suppressed and the rest still closes; the caller throws the original.
 */
final class Taken {
    private final Runnable settle;
    private final List<AutoCloseable> held = new ArrayList<>();

    /** {@code settle}: waits for what is queued into the resources, usually {@link #settleLegacyStream}. */
    Taken(Runnable settle) {
        this.settle = settle;
    }

    /** Holds {@code resource} until {@link #giveBack} (nothing when it is null: a step that took nothing); returns it. */
    <T extends AutoCloseable> T add(T resource) {
        if (resource != null) {
            held.add(resource);
        }
        return resource;
    }

    /** Waits ({@code settle}), then closes everything taken, the last first; what fails here is added to {@code failure}. */
    void giveBack(Throwable failure) {
        try {
            settle.run();
        } catch (RuntimeException | Error e) {
            suppress(failure, e);
        }
        for (int i = held.size() - 1; i >= 0; i--) {
            try {
                held.get(i).close();
            } catch (Exception | Error e) {
                suppress(failure, e);
            }
        }
        held.clear();
    }

    private static void suppress(Throwable failure, Throwable e) {
        if (e != failure) {
            failure.addSuppressed(e);
        }
    }

    /**
     * Waits for the copies and fills just made on the legacy stream: a copy from pageable memory
     * may return before its DMA lands, and the workers' streams (non-blocking) do not wait for that
     * stream.
     */
    static void settleLegacyStream() {
        JCuda.cudaStreamSynchronize(new cudaStream_t());
    }
}
