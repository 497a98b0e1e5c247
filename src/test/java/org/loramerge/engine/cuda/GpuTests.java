package org.loramerge.engine.cuda;

import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.select.Backends;

import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * How GPU tests get their engine: they skip only where there is no usable device; on a machine
 * with a GPU, an engine that fails to start (a PTX that does not load, a missing kernel, cuBLAS)
 * fails the test, so a broken GPU build cannot pass as "skipped".
 */
final class GpuTests {
    private GpuTests() {
    }

    /** The CUDA engine on device 0; skips the caller where there is no device, fails it where the engine does not start. */
    static CudaBackend openOrSkip() {
        return openOrSkip(() -> (CudaBackend) Backends.openCuda(0, 4));
    }

    /** {@link #openOrSkip()} with another budget for the dense ΔW than the engine's own. */
    static CudaBackend openOrSkip(long deltaBudgetBytes) {
        return openOrSkip(() -> CudaBackend.open(0, 4, deltaBudgetBytes));
    }

    private interface Opening {
        CudaBackend open() throws DeviceUnavailableException;
    }

    private static CudaBackend openOrSkip(Opening opening) {
        try {
            return opening.open();
        } catch (DeviceUnavailableException e) {
            if (e.devicePresent()) {
                fail("a GPU is present but the CUDA engine did not start: " + e.getMessage(), e);
            }
            assumeTrue(false, "no usable GPU: " + e.getMessage());
            throw new AssertionError("unreachable");
        }
    }
}
