package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;
import org.loramerge.engine.Stages;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The workers serve the lanes in turn, each lane in its order; the window grows with the lanes; close drops what has not started. */
class BlockExecutorTest {
    @Test
    void oneWorkerTakesTheLanesInTurnEachInItsOrder() throws Exception {
        try (BlockExecutor ex = new BlockExecutor(1, 1, new Stages())) {
            CountDownLatch hold = new CountDownLatch(1);
            CountDownLatch started = new CountDownLatch(1);
            List<String> ran = Collections.synchronizedList(new ArrayList<>());
            Future<?> first = ex.submit(() -> {
                started.countDown();
                hold.await();
                return null;
            });
            assertTrue(started.await(5, TimeUnit.SECONDS)); // the worker is busy while the lanes fill
            List<Future<?>> all = new ArrayList<>();
            for (int lane = 0; lane < 3; lane++) {
                ex.lane(lane);
                for (int i = 0; i < 3; i++) {
                    String name = lane + ":" + i;
                    all.add(ex.submit(() -> ran.add(name)));
                }
            }
            assertEquals(3 * (1 * 1 + 2), ex.window(), "a window per lane");
            hold.countDown();
            first.get(5, TimeUnit.SECONDS);
            for (Future<?> f : all) {
                f.get(5, TimeUnit.SECONDS);
            }
            assertEquals(List.of("0:0", "1:0", "2:0", "0:1", "1:1", "2:1", "0:2", "1:2", "2:2"), ran);
        }
    }

    @Test
    void closingCancelsWorkNotStartedAndStopsTheWorkers() throws Exception {
        BlockExecutor ex = new BlockExecutor(1, 1, new Stages());
        CountDownLatch started = new CountDownLatch(1);
        Future<?> running = ex.submit(() -> {
            started.countDown();
            Thread.sleep(60_000);
            return null;
        });
        Future<?> queued = ex.submit(() -> "never");
        assertTrue(started.await(5, TimeUnit.SECONDS));
        ex.close();
        assertThrows(CancellationException.class, () -> queued.get(5, TimeUnit.SECONDS));
        Exception e = assertThrows(Exception.class, () -> BlockExecutor.get(running));
        assertTrue(e instanceof InterruptedException, "the running work was interrupted: " + e);
        assertThrows(IllegalStateException.class, () -> ex.submit(() -> 1));
    }

    @Test
    void closingReturnsOnlyOnceTheWorkRunningHasEnded() throws Exception {
        // work that does not stop at an interrupt (a device call, a copy into a page-locked block): close must
        // not return while it runs, or the caller frees the engine and its buffers under it
        BlockExecutor ex = new BlockExecutor(2, 1, new Stages());
        CountDownLatch started = new CountDownLatch(2);
        AtomicInteger ended = new AtomicInteger();
        for (int i = 0; i < 2; i++) {
            ex.submit(() -> {
                started.countDown();
                long until = System.nanoTime() + 300_000_000L;
                while (System.nanoTime() < until) {
                    Thread.onSpinWait();
                }
                ended.incrementAndGet();
                return null;
            });
        }
        assertTrue(started.await(5, TimeUnit.SECONDS));
        ex.close();
        assertEquals(2, ended.get(), "both running blocks ended before close returned");
    }
}
