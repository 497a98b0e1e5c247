package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * What a GPU constructor took before a later step failed goes back without a device (the
 * resources and the wait record what happens to them): after the wait, every one, the last first,
 * whatever else fails on the way, which is added to the original failure.
 */
class TakenTest {
    private final List<String> events = new ArrayList<>();

    private AutoCloseable resource(String name, RuntimeException onClose) {
        return () -> {
            events.add("close " + name);
            if (onClose != null) {
                throw onClose;
            }
        };
    }

    @Test
    void aFailureGivesBackEverythingTakenTheLastFirstOnceTheQueuedCopiesHaveLanded() {
        Taken taken = new Taken(() -> events.add("wait"));
        AutoCloseable factors = resource("factors", null);
        assertSame(factors, taken.add(factors), "add hands the resource back, for the constructor's field");
        taken.add(resource("dequantizer", null));
        taken.add(resource("magnitudes", null));
        IllegalStateException failure = new IllegalStateException("the wait for the uploads failed");
        taken.giveBack(failure);
        assertEquals(List.of("wait", "close magnitudes", "close dequantizer", "close factors"), events);
        assertEquals(0, failure.getSuppressed().length);
    }

    @Test
    void aStepThatTookNothingAddsNoSuppressedFailureWhenTheRestIsGivenBack() {
        Taken taken = new Taken(() -> events.add("wait"));
        taken.add(resource("factors", null));
        assertEquals(null, taken.add((AutoCloseable) null), "a dequantizer the host runs is null");
        IllegalStateException failure = new IllegalStateException("out of device memory for DoRA's magnitudes");
        taken.giveBack(failure);
        assertEquals(List.of("wait", "close factors"), events);
        assertEquals(0, failure.getSuppressed().length, "no NullPointerException from the step that took nothing");
    }

    @Test
    void aCloseThatFailsIsAddedToTheOriginalFailureAndTheOthersStillClose() {
        Taken taken = new Taken(() -> events.add("wait"));
        RuntimeException badClose = new IllegalStateException("device memory freed twice");
        taken.add(resource("factors", null));
        taken.add(resource("dequantizer", badClose));
        taken.add(resource("magnitudes", null));
        RuntimeException failure = new IllegalStateException("out of memory");
        taken.giveBack(failure);
        assertEquals(List.of("wait", "close magnitudes", "close dequantizer", "close factors"), events);
        assertArrayEquals(new Throwable[] {badClose}, failure.getSuppressed());
    }

    @Test
    void aWaitThatFailsAgainIsAddedToTheOriginalFailureAndEverythingStillCloses() {
        RuntimeException waitFailed = new IllegalStateException("cudaErrorLaunchFailure");
        Taken taken = new Taken(() -> {
            events.add("wait");
            throw waitFailed;
        });
        taken.add(resource("factors", null));
        taken.add(resource("magnitudes", null));
        Error failure = new OutOfMemoryError("Java heap space");
        taken.giveBack(failure);
        assertEquals(List.of("wait", "close magnitudes", "close factors"), events);
        assertArrayEquals(new Throwable[] {waitFailed}, failure.getSuppressed());
    }

    @Test
    void theFailureItselfRaisedAgainByTheWaitIsNotAddedToItself() {
        RuntimeException failure = new IllegalStateException("cudaErrorLaunchFailure");
        Taken taken = new Taken(() -> {
            throw failure;
        });
        taken.add(resource("factors", null));
        taken.giveBack(failure);
        assertEquals(List.of("close factors"), events);
        assertEquals(0, failure.getSuppressed().length);
    }
}
