package org.loramerge.engine.cuda;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeEach;

/**
 * A GPU test class's engine: {@link #cuda} opened before its first test ({@link
 * GpuTests#openOrSkip}, which skips the test where there is no usable GPU) and closed after its
 * last. One at a time: the test classes run one after another, and each closes what it opened.
 */
abstract class OnTheGpu {
    static CudaBackend cuda;

    @BeforeEach
    void openDevice() {
        if (cuda == null) {
            cuda = GpuTests.openOrSkip();
        }
    }

    @AfterAll
    static void closeDevice() {
        if (cuda != null) {
            cuda.close();
            cuda = null;
        }
    }
}
