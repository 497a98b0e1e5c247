package org.loramerge.engine.cuda;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;

/** A PTX module shipped in the jar (built from kernels/ by CMakeLists.txt), unloaded exactly once. */
final class PtxModule implements AutoCloseable {
    private final CUmodule module = new CUmodule();
    private final String name;
    private boolean closed;

    PtxModule(String resourceName) throws IOException {
        this.name = resourceName;
        byte[] ptx;
        try (InputStream in = PtxModule.class.getResourceAsStream("/org/loramerge/kernels/" + resourceName)) {
            if (in == null) {
                throw new IOException("kernel " + resourceName + " is missing from the jar; rebuild with scripts/native/build-native.sh");
            }
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            in.transferTo(out);
            out.write(0); // cuModuleLoadData reads PTX as a NUL-terminated string
            ptx = out.toByteArray();
        }
        JCudaDriver.cuModuleLoadData(module, ptx);
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
