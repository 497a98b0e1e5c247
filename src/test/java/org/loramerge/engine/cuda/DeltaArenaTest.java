package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;

/**
 * The ΔW budget of extract and combine without a device (buffers are ids, allocations and frees
 * recorded): the device memory it holds never exceeds the budget however many weights ask, a weight
 * waits for room instead, a size given back is reused without a free (which would wait for the
 * device), room for another size is made by freeing kept buffers, and a device with less free
 * memory than the budget gets the kept buffers back before an allocation is given up.
 */
class DeltaArenaTest {
    private static final long MIB = 1L << 20;

    /** Allocations as ids, with the live device bytes and their peak; a device of {@code capacity} bytes refuses more. */
    private static final class Recorder implements DeltaArena.Allocator<long[]> {
        final List<Long> allocated = new ArrayList<>();
        final List<Long> freed = new ArrayList<>();
        final AtomicLong live = new AtomicLong();
        final AtomicLong peak = new AtomicLong();
        final long capacity;

        Recorder() {
            this(Long.MAX_VALUE);
        }

        Recorder(long capacity) {
            this.capacity = capacity;
        }

        @Override
        public synchronized long[] allocate(long sizeInBytes) {
            if (live.get() + sizeInBytes > capacity) {
                throw new IllegalStateException("out of memory: " + live.get() + " of " + capacity + " bytes in use");
            }
            allocated.add(sizeInBytes);
            peak.accumulateAndGet(live.addAndGet(sizeInBytes), Math::max);
            return new long[] {sizeInBytes};
        }

        @Override
        public synchronized void free(long[] buffer) {
            freed.add(buffer[0]);
            live.addAndGet(-buffer[0]);
        }
    }

    @Test
    void aWeightWaitsForRoomUntilAnEarlierOneIsGivenBack() throws Exception {
        Recorder r = new Recorder();
        try (DeltaArena<long[]> arena = new DeltaArena<>(600 * MIB, r)) {
            DeltaArena<long[]>.Lease a = arena.take(344 * MIB);
            CompletableFuture<DeltaArena<long[]>.Lease> b = CompletableFuture.supplyAsync(() -> {
                try {
                    return arena.take(344 * MIB);
                } catch (InterruptedException e) {
                    throw new IllegalStateException(e);
                }
            });
            assertThrows(TimeoutException.class, () -> b.get(300, TimeUnit.MILLISECONDS), "two do not fit the budget at once");
            a.close();
            DeltaArena<long[]>.Lease second = b.get(10, TimeUnit.SECONDS);
            assertEquals(List.of(344 * MIB), r.allocated, "the buffer given back is the one taken again, without a free");
            assertTrue(r.freed.isEmpty());
            assertEquals(344 * MIB, arena.heldBytes());
            second.close();
            assertEquals(0, arena.heldBytes());
        }
        assertEquals(List.of(344 * MIB), r.freed, "closing frees what was kept");
        assertEquals(0, r.live.get());
    }

    @Test
    void aNewSizeFreesKeptBuffersOfOtherSizesSoTheDeviceNeverHoldsMoreThanTheBudget() throws Exception {
        Recorder r = new Recorder();
        try (DeltaArena<long[]> arena = new DeltaArena<>(1024 * MIB, r)) {
            List<DeltaArena<long[]>.Lease> square = new ArrayList<>();
            for (int i = 0; i < 6; i++) {
                square.add(arena.take(4096L * 4096 * 8)); // 128 MiB each
            }
            for (DeltaArena<long[]>.Lease l : square) {
                l.close();
            }
            assertEquals(768 * MIB, arena.deviceBytes(), "kept for the next weight of this shape");
            DeltaArena<long[]>.Lease tall = arena.take(11008L * 4096 * 8); // 344 MiB: 768 + 344 > 1024
            assertEquals(List.of(128 * MIB), r.freed, "one kept buffer freed to make room");
            assertTrue(arena.deviceBytes() <= 1024 * MIB);
            DeltaArena<long[]>.Lease again = arena.take(4096L * 4096 * 8);
            assertEquals(7, r.allocated.size(), "a kept square buffer taken again");
            again.close();
            tall.close();
        }
        assertTrue(r.peak.get() <= 1024 * MIB, "peak " + r.peak.get());
        assertEquals(0, r.live.get());
    }

    @Test
    void manyWeightsAskingAtOnceNeverHoldMoreThanTheBudget() throws Exception {
        Recorder r = new Recorder();
        long[] sizes = {128 * MIB, 344 * MIB, 200 * MIB};
        ExecutorService threads = Executors.newFixedThreadPool(8);
        try (DeltaArena<long[]> arena = new DeltaArena<>(700 * MIB, r)) {
            List<CompletableFuture<Void>> users = new ArrayList<>();
            for (int i = 0; i < 24; i++) {
                long size = sizes[i % sizes.length];
                users.add(CompletableFuture.runAsync(() -> {
                    try (DeltaArena<long[]>.Lease l = arena.take(size)) {
                        assertSame(l.buffer(), l.buffer());
                        Thread.sleep(2);
                    } catch (InterruptedException e) {
                        throw new IllegalStateException(e);
                    }
                }, threads));
            }
            CompletableFuture.allOf(users.toArray(new CompletableFuture[0])).get(60, TimeUnit.SECONDS);
            assertEquals(0, arena.heldBytes());
        } finally {
            threads.shutdown();
        }
        assertTrue(r.peak.get() <= 700 * MIB, "peak " + r.peak.get() + " over the budget");
        assertEquals(0, r.live.get(), "everything freed on close");
    }

    @Test
    void aWeightLargerThanTheWholeBudgetIsRefusedAndAUseAfterCloseFails() throws Exception {
        Recorder r = new Recorder();
        DeltaArena<long[]> arena = new DeltaArena<>(64 * MIB, r);
        assertThrows(IllegalArgumentException.class, () -> arena.take(65 * MIB));
        DeltaArena<long[]>.Lease l = arena.take(MIB);
        arena.close();
        assertThrows(IllegalStateException.class, () -> arena.take(MIB));
        l.close();
        assertEquals(List.of(MIB), r.freed, "a buffer given back after close is freed");
        assertThrows(IllegalStateException.class, l::close, "given back twice");
        assertThrows(IllegalStateException.class, l::buffer);
        assertEquals(0, r.live.get());
    }

    @Test
    void aDeviceWithLessFreeMemoryThanTheBudgetGetsTheKeptBuffersBackBeforeAnAllocationFails() throws Exception {
        Recorder r = new Recorder(500 * MIB); // the budget is 1 GiB, but another process holds the rest of the device
        try (DeltaArena<long[]> arena = new DeltaArena<>(1024 * MIB, r)) {
            DeltaArena<long[]>.Lease a = arena.take(128 * MIB);
            DeltaArena<long[]>.Lease b = arena.take(128 * MIB);
            a.close();
            b.close();
            assertEquals(256 * MIB, arena.deviceBytes(), "kept for the next weight of that shape");
            // 256 kept + 344 fits the budget, so nothing is freed first; the device refuses it until the kept buffers go
            DeltaArena<long[]>.Lease tall = arena.take(344 * MIB);
            assertEquals(List.of(128 * MIB, 128 * MIB), r.freed, "both kept buffers freed for the retry");
            assertEquals(344 * MIB, arena.deviceBytes());
            tall.close();
        }
        assertEquals(0, r.live.get());
    }

    @Test
    void anAllocationTheDeviceRefusesWithNothingKeptFailsAndHoldsNoRoom() throws Exception {
        Recorder r = new Recorder(300 * MIB);
        try (DeltaArena<long[]> arena = new DeltaArena<>(1024 * MIB, r)) {
            assertTrue(arena.fits(344 * MIB), "within the budget");
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> arena.take(344 * MIB));
            assertTrue(e.getMessage().startsWith("out of memory"), "the allocator's failure, for the caller to recognise: " + e.getMessage());
            assertEquals(0, arena.heldBytes(), "the refused size is not counted as handed out");
            try (DeltaArena<long[]>.Lease small = arena.take(128 * MIB)) {
                assertEquals(128 * MIB, arena.heldBytes(), "a size the device has room for is still handed out at once");
            }
            assertFalse(arena.fits(1025 * MIB), "over the whole budget");
        }
        assertEquals(0, r.live.get());
    }
}
