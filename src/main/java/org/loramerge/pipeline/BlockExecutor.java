package org.loramerge.pipeline;

import java.io.IOException;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.loramerge.engine.Stages;

/**
 * Computes blocks on worker threads and completes them in order on the calling thread, with a
 * bounded number in flight: work is {@link #submit submitted} to the pool, and the step that
 * consumes its result (writing it, usually) is queued with {@link #then}; steps run in the order
 * they were queued, as soon as more than {@link #window()} are waiting, or at {@link #drain()}.
 * Memory is so bounded by the window times a block, whatever the model's size.
 */
final class BlockExecutor implements AutoCloseable {
    /** Work completed in order on the calling thread. */
    interface Step {
        void complete() throws Exception;
    }

    private final ExecutorService pool;
    private final int window;
    private final Stages stages;
    private final Deque<Step> pending = new ArrayDeque<>();

    /**
     * {@code threads} workers, with up to {@code windowPerThread} steps per worker (and two) waiting
     * to be completed; the time the calling thread spends completing them (mostly waiting for the
     * oldest block) goes to {@code stages} as {@link Stages.Stage#IN_ORDER_WAIT}.
     */
    BlockExecutor(int threads, int windowPerThread, Stages stages) {
        this.window = windowPerThread * threads + 2;
        this.stages = stages;
        this.pool = Executors.newFixedThreadPool(threads, r -> {
            Thread t = new Thread(r, "loramerge-worker");
            t.setDaemon(true);
            return t;
        });
    }

    /** Steps that may wait before the oldest must complete. */
    int window() {
        return window;
    }

    <T> Future<T> submit(Callable<T> work) {
        return pool.submit(work);
    }

    /** Queues {@code step}; completes the oldest steps while more than the window wait. */
    void then(Step step) throws Exception {
        pending.addLast(step);
        while (pending.size() > window) {
            completeOldest();
        }
    }

    /** Completes every queued step, in order. */
    void drain() throws Exception {
        while (!pending.isEmpty()) {
            completeOldest();
        }
    }

    private void completeOldest() throws Exception {
        long t0 = System.nanoTime();
        pending.removeFirst().complete();
        stages.since(Stages.Stage.IN_ORDER_WAIT, t0, 0);
    }

    /** The result of {@code f}, with the work's own exception rethrown as it was. */
    static <T> T get(Future<T> f) throws Exception {
        try {
            return f.get();
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) {
                throw (Exception) c;
            }
            if (c instanceof Error) {
                throw (Error) c;
            }
            throw new IOException(c);
        }
    }

    @Override
    public void close() {
        pool.shutdownNow();
    }
}
