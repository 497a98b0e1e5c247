package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import jcuda.CudaException;
import org.junit.jupiter.api.Test;
import org.loramerge.engine.DeviceOutOfMemoryException;

/**
 * Which GPU failures make combine decompose a module on the host instead of failing the run,
 * without a device: an exhausted device however JCuda reports it (the runtime's cudaMalloc, the
 * driver API, cuBLAS), also when another exception wraps the report; any other CUDA failure (a
 * defect, a lost device) is not taken for one, so it still stops the run with its trace.
 */
class OutOfMemoryReportTest {
    @Test
    void anExhaustedDeviceIsRecognisedWhicheverCudaLibraryReportsIt() {
        assertTrue(CudaDevice.isOutOfMemory(new CudaException("cudaErrorMemoryAllocation")), "cudaMalloc");
        assertTrue(CudaDevice.isOutOfMemory(new CudaException("CUDA_ERROR_OUT_OF_MEMORY")), "the driver API");
        assertTrue(CudaDevice.isOutOfMemory(new CudaException("CUBLAS_STATUS_ALLOC_FAILED")), "cuBLAS");
        assertTrue(CudaDevice.isOutOfMemory(new UncheckedIOException(new IOException(new CudaException("cudaErrorMemoryAllocation")))),
                "wrapped on its way up");
        assertTrue(CudaDevice.isOutOfMemory(new DeviceOutOfMemoryException("cuda:0", new CudaException("cudaErrorMemoryAllocation"))),
                "already translated");
    }

    @Test
    void otherCudaFailuresAreNotTakenForAnExhaustedDevice() {
        assertFalse(CudaDevice.isOutOfMemory(new CudaException("cudaErrorIllegalAddress")));
        assertFalse(CudaDevice.isOutOfMemory(new CudaException("CUDA_ERROR_LAUNCH_FAILED")));
        assertFalse(CudaDevice.isOutOfMemory(new CudaException("CUBLAS_STATUS_EXECUTION_FAILED")));
        assertFalse(CudaDevice.isOutOfMemory(new IllegalStateException("cudaErrorMemoryAllocation")), "not a CUDA report");
    }
}
