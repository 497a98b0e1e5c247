package org.loramerge.engine.cuda;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;

/**
 * A module of kernels shipped in the jar: a fat binary built from kernels/ by CMakeLists.txt, with
 * machine code for sm_80/86/89/90 (loaded as is) and compute_80 PTX (JIT-compiled by the driver for
 * any other GPU). Unloaded exactly once.
 */
final class KernelModule implements AutoCloseable {
    private final CUmodule module = new CUmodule();
    private final String name;
    private boolean closed;

    KernelModule(String resourceName) throws IOException {
        this.name = resourceName;
        byte[] image;
        try (InputStream in = KernelModule.class.getResourceAsStream("/org/loramerge/kernels/" + resourceName)) {
            if (in == null) {
                throw missing(resourceName);
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            in.transferTo(out);
            image = out.toByteArray();
        }
        JCudaDriver.cuModuleLoadData(module, image);
    }

    /** Throws the IOException the constructor would when kernel image {@code resourceName} is not in the jar. */
    static void requirePresent(String resourceName) throws IOException {
        if (KernelModule.class.getResource("/org/loramerge/kernels/" + resourceName) == null) {
            throw missing(resourceName);
        }
    }

    private static IOException missing(String resourceName) {
        return new IOException("kernel " + resourceName + " is missing from the jar; rebuild with scripts/native/build-native.sh");
    }

    /** Copies {@code values} into the module's {@code __device__} array {@code name}, which must be exactly that large. */
    void setGlobal(String name, int[] values) {
        CUdeviceptr ptr = new CUdeviceptr();
        long[] size = {0};
        JCudaDriver.cuModuleGetGlobal(ptr, size, module, name);
        long bytes = (long) values.length * Sizeof.INT;
        if (size[0] != bytes) {
            throw new IllegalStateException(this.name + ": " + name + " has " + size[0] + " bytes, not " + bytes);
        }
        JCudaDriver.cuMemcpyHtoD(ptr, Pointer.to(values), bytes);
    }

    CUfunction function(String kernel) {
        CUfunction f = new CUfunction();
        JCudaDriver.cuModuleGetFunction(f, module, kernel);
        return f;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("module " + name + " unloaded twice");
        }
        closed = true;
        JCudaDriver.cuModuleUnload(module);
    }
}
