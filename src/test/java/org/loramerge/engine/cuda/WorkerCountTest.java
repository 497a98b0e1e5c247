package org.loramerge.engine.cuda;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The GPU engine's workers without the streams knob: half the CPU threads up to 8 for an output on a
 * disk, three quarters up to 12 where one file takes blocks from several threads at once (tmpfs), and
 * never fewer than 2.
 */
class WorkerCountTest {
    @Test
    void anOutputInMemoryGetsMoreWorkersThanOneOnADiskWithinTheirCaps() {
        assertEquals(8, CudaBackend.defaultStreams(16, false));
        assertEquals(12, CudaBackend.defaultStreams(16, true));
        assertEquals(8, CudaBackend.defaultStreams(128, false));
        assertEquals(12, CudaBackend.defaultStreams(128, true));
        assertEquals(6, CudaBackend.defaultStreams(8, true));
        assertEquals(4, CudaBackend.defaultStreams(8, false));
        assertEquals(2, CudaBackend.defaultStreams(2, true));
        assertEquals(2, CudaBackend.defaultStreams(1, false));
    }
}
