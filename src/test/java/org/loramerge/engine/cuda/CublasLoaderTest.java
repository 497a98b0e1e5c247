package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** When the cuBLAS 12 forwarder is loaded, and when it must not be (no GPU needed: only the decision). */
class CublasLoaderTest {
    @TempDir
    Path dir;

    @Test
    void aRealCublas12MeansNoForwarder() throws IOException {
        Path cuda12 = Files.createDirectories(dir.resolve("cuda-12/lib64"));
        Path cuda13 = Files.createDirectories(dir.resolve("cuda-13/lib64"));
        Files.createFile(cuda12.resolve("libcublas.so.12"));
        Files.createFile(cuda13.resolve("libcublas.so.13"));
        assertNull(CublasLoader.forwardingTarget(List.of(cuda13, cuda12)), "a system cuBLAS 12 must not be shadowed");
    }

    @Test
    void onlyCublas13MeansForwardingToIt() throws IOException {
        Path cuda13 = Files.createDirectories(dir.resolve("cuda-13/lib64"));
        Files.createFile(cuda13.resolve("libcublas.so.13"));
        assertEquals(cuda13.resolve("libcublas.so.13"), CublasLoader.forwardingTarget(List.of(dir, cuda13)));
    }

    @Test
    void noCublasAtAllSaysWhatToDo() {
        IOException e = assertThrows(IOException.class, () -> CublasLoader.forwardingTarget(List.of(dir)));
        assertTrue(e.getMessage().contains("LD_LIBRARY_PATH"), e.getMessage());
    }

    @Test
    void theForwarderShipsInTheJar() throws IOException {
        try (var in = CublasLoader.class.getResourceAsStream("/org/loramerge/native/linux-x86_64/libcublas.so.12")) {
            assertTrue(in != null && in.readAllBytes().length > 10_000, "forwarder missing from the resources");
        }
    }
}
