package org.loramerge.api;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.reflect.Proxy;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;
import org.loramerge.engine.Backend;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** An engine that fails to close after its outputs are committed does not take their results (and so the batch's records) with it. */
class BackendCloseTest {
    /** A backend whose close throws, counting the calls. */
    static Backend failingToClose(int[] closes) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class}, (proxy, method, args) -> {
            switch (method.getName()) {
                case "close" -> {
                    closes[0]++;
                    throw new IllegalStateException("cuCtxDestroy failed");
                }
                case "describe" -> {
                    return "test engine";
                }
                default -> throw new UnsupportedOperationException(method.getName());
            }
        });
    }

    @Test
    void theResultOfCommittedWorkIsReturnedWhenClosingTheEngineFailsAndTheFailureIsAWarning() throws Exception {
        int[] closes = {0};
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        String result = LoraMerge.withBackend(failingToClose(closes), new PrintStream(err, true, StandardCharsets.UTF_8), b -> "committed");
        assertEquals("committed", result);
        assertEquals(1, closes[0], "the engine is closed once");
        String warning = err.toString(StandardCharsets.UTF_8);
        assertTrue(warning.startsWith("warning: the outputs are written") && warning.contains("cuCtxDestroy failed"), warning);
    }

    @Test
    void aFailureOfTheWorkIsThrownWithTheCloseFailureSuppressed() {
        int[] closes = {0};
        IOException failure = new IOException("disk full");
        IOException thrown = assertThrows(IOException.class, () -> LoraMerge.withBackend(failingToClose(closes), null, b -> {
            throw failure;
        }));
        assertSame(failure, thrown);
        assertEquals(1, closes[0]);
        assertEquals("cuCtxDestroy failed", thrown.getSuppressed()[0].getMessage());
    }
}
