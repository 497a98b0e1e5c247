package org.loramerge.engine;

import java.util.concurrent.ExecutorService;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

/** Ending the thread pools that read checkpoints beside other readers, and waiting for threads whatever interrupts the wait. */
public final class Pools {
    private Pools() {
    }

    /** A wait that an interrupt may cut short ({@link Thread#join}, {@link java.util.concurrent.CountDownLatch#await}). */
    public interface Wait {
        void await() throws InterruptedException;
    }

    /**
     * Waits until {@code wait} returns, however often the calling thread is interrupted meanwhile (for
     * what must end before the caller frees what it uses); an interrupt is kept for the caller.
     */
    public static void awaitUninterruptibly(Wait wait) {
        boolean interrupted = false;
        while (true) {
            try {
                wait.await();
                break;
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * Cancels {@code tasks} not yet started, without interrupting those running (an interrupt closes
     * a checkpoint's shared file channel under every other thread reading it), shuts {@code pool}
     * down and waits until its threads have ended, so that nothing still reads what the caller closes
     * next. An interrupt while waiting is kept for the caller.
     */
    public static void cancelAndAwait(ExecutorService pool, Iterable<? extends Future<?>> tasks) {
        for (Future<?> f : tasks) {
            if (f != null) {
                f.cancel(false);
            }
        }
        pool.shutdown();
        boolean interrupted = false;
        boolean finished = false;
        while (!finished) {
            try {
                finished = pool.awaitTermination(1, TimeUnit.MINUTES);
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }
}
