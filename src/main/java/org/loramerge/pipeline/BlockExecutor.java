package org.loramerge.pipeline;

import java.io.IOException;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Future;
import java.util.concurrent.FutureTask;
import org.loramerge.engine.Stages;

/**
 * Computes blocks on worker threads and completes them in order on the calling thread, with a
 * bounded number in flight: work is {@link #submit submitted} to the pool, and the step that
 * consumes its result (writing it, usually) is queued with {@link #then}; steps run in the order
 * they were queued, as soon as more than {@link #window()} are waiting, or at {@link #drain()}.
 *
 * <p>Work is submitted into one of several lanes ({@link #lane}): the workers take it from the
 * lanes in turn, each lane's in its order, so that the shards being written at once (a lane each)
 * all have blocks on the workers at any moment, not only the one whose tensor came first. The
 * window grows with the lanes, so that each has a tensor in flight. A pending step holds a future,
 * not a block: the blocks themselves are bounded by the workers' buffers.
 */
final class BlockExecutor implements AutoCloseable {
    /** Work completed in order on the calling thread. */
    interface Step {
        void complete() throws Exception;
    }

    private final List<Thread> workers = new ArrayList<>();
    private final List<Deque<Runnable>> lanes = new ArrayList<>();
    private final int windowPerLane;
    private final Stages stages;
    private final Deque<Step> pending = new ArrayDeque<>();
    /** The lane the calling thread submits into. */
    private int lane;
    /** The lane whose work a worker takes next (round robin over those with work). */
    private int turn;
    private boolean closed;

    /**
     * {@code threads} workers, with up to {@code windowPerThread} steps per worker (and two) waiting
     * to be completed per lane; the time the calling thread spends completing them (mostly waiting for the
     * oldest block) goes to {@code stages} as {@link Stages.Stage#IN_ORDER_WAIT}.
     */
    BlockExecutor(int threads, int windowPerThread, Stages stages) {
        this.windowPerLane = windowPerThread * threads + 2;
        this.stages = stages;
        lanes.add(new ArrayDeque<>());
        for (int i = 0; i < threads; i++) {
            Thread t = new Thread(this::work, "loramerge-worker");
            t.setDaemon(true);
            workers.add(t);
            t.start();
        }
    }

    /** Steps that may wait before the oldest must complete. */
    int window() {
        synchronized (this) {
            return windowPerLane * lanes.size();
        }
    }

    /** Work submitted from now on goes into lane {@code index} (0 up; lanes are added as needed). */
    synchronized void lane(int index) {
        if (index < 0) {
            throw new IllegalArgumentException("lane " + index);
        }
        while (lanes.size() <= index) {
            lanes.add(new ArrayDeque<>());
        }
        lane = index;
    }

    <T> Future<T> submit(Callable<T> work) {
        FutureTask<T> task = new FutureTask<>(work);
        synchronized (this) {
            if (closed) {
                throw new IllegalStateException("the block executor is closed");
            }
            lanes.get(lane).addLast(task);
            notify();
        }
        return task;
    }

    private void work() {
        while (true) {
            Runnable next;
            synchronized (this) {
                next = null;
                while (!closed && (next = take()) == null) {
                    try {
                        wait();
                    } catch (InterruptedException e) {
                        return;
                    }
                }
                if (closed) {
                    return;
                }
            }
            next.run();
            if (Thread.interrupted() && isClosed()) {
                return;
            }
        }
    }

    /** The next lane's oldest work, in turn, or null when there is none (holding the lock). */
    private Runnable take() {
        for (int i = 0; i < lanes.size(); i++) {
            Deque<Runnable> q = lanes.get((turn + i) % lanes.size());
            if (!q.isEmpty()) {
                turn = (turn + i + 1) % lanes.size();
                return q.removeFirst();
            }
        }
        return null;
    }

    private synchronized boolean isClosed() {
        return closed;
    }

    /** Queues {@code step}; completes the oldest steps while more than the window wait. */
    void then(Step step) throws Exception {
        pending.addLast(step);
        while (pending.size() > window()) {
            completeOldest();
        }
    }

    /** Completes every queued step, in order. */
    void drain() throws Exception {
        while (!pending.isEmpty()) {
            completeOldest();
        }
    }

    /** Completes the oldest queued step; false when none is queued. */
    boolean completeOldest() throws Exception {
        if (pending.isEmpty()) {
            return false;
        }
        long t0 = System.nanoTime();
        pending.removeFirst().complete();
        stages.since(Stages.Stage.IN_ORDER_WAIT, t0, 0);
        return true;
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

    /**
     * Stops the workers: work not started is dropped (cancelled), work running is interrupted, and the
     * call returns once every worker has ended, so that after a failed merge no block is still inside
     * the engine's handles or buffers (page-locked on a GPU) when the caller closes the engine.
     */
    @Override
    public void close() {
        List<Runnable> dropped = new ArrayList<>();
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            for (Deque<Runnable> q : lanes) {
                dropped.addAll(q);
                q.clear();
            }
            notifyAll();
        }
        for (Runnable r : dropped) {
            ((Future<?>) r).cancel(false);
        }
        for (Thread t : workers) {
            t.interrupt();
        }
        boolean interrupted = false;
        for (Thread t : workers) {
            if (t == Thread.currentThread()) {
                continue;
            }
            while (t.isAlive()) {
                try {
                    t.join();
                } catch (InterruptedException e) {
                    interrupted = true; // keep waiting: the work ends soon, interrupted; the caller sees the interrupt after
                }
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }
}
