package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Set;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * What the GPU engine's start does differently from a plain one: page-locked memory registered
 * rather than allocated by the driver, a merge's blocks made on several threads at once, the kernel
 * modules other than round's loaded on first use.
 */
@Tag("gpu")
class EngineStartGpuTest extends OnTheGpu {
    @Test
    void pinnedMemoryIsRegisteredPagesThatCopyBothWaysAndFreeOnce() {
        cuda.device().bindContext();
        PinnedMemory m = new PinnedMemory(3 * 4096 + 5);
        assertTrue(m.isRegistered(), "registered pages, not cudaHostAlloc's");
        ByteBuffer b = m.buffer();
        assertEquals(3 * 4096 + 5, b.capacity());
        for (int i = 0; i < b.capacity(); i++) {
            b.put(i, (byte) (i * 31));
        }
        DeviceMemory d = new DeviceMemory(m.sizeInBytes());
        PinnedMemory back = new PinnedMemory(m.sizeInBytes());
        try {
            CudaStream s = new CudaStream();
            JCuda.cudaMemcpyAsync(d.pointer(), m.pointer(), m.sizeInBytes(), cudaMemcpyKind.cudaMemcpyHostToDevice, s.runtime());
            JCuda.cudaMemcpyAsync(back.pointer(), d.pointer(), m.sizeInBytes(), cudaMemcpyKind.cudaMemcpyDeviceToHost, s.runtime());
            s.synchronize();
            s.close();
            byte[] want = new byte[b.capacity()];
            byte[] got = new byte[b.capacity()];
            b.get(0, want);
            back.buffer().get(0, got);
            assertArrayEquals(want, got);
        } finally {
            d.close();
            back.close();
            m.close();
        }
        assertThrows(IllegalStateException.class, m::close);
        assertThrows(IllegalStateException.class, m::buffer);
    }

    @Test
    void aMergesBlocksAreMadeAtOnceEachItsOwnPageLockedBuffer() {
        List<ByteBuffer> made = cuda.allocateBlockBuffers(26, 1 << 20);
        assertEquals(26, made.size());
        Set<ByteBuffer> distinct = Collections.newSetFromMap(new IdentityHashMap<>());
        for (int i = 0; i < made.size(); i++) {
            ByteBuffer b = made.get(i);
            assertEquals(1 << 20, b.capacity());
            assertTrue(cuda.isBlockBuffer(b), "handed out as a page-locked block");
            assertTrue(distinct.add(b));
            for (int at = 0; at < b.capacity(); at += 4096) {
                b.putInt(at, i);
            }
        }
        for (int i = 0; i < made.size(); i++) {
            for (int at = 0; at < made.get(i).capacity(); at += 4096) {
                assertEquals(i, made.get(i).getInt(at), "no two blocks share a page");
            }
        }
    }

    @Test
    void onlyRoundsKernelsLoadWithTheDeviceTheOthersOnFirstUse() {
        CudaBackend fresh = GpuTests.openOrSkip();
        try {
            CudaDevice d = fresh.device();
            assertEquals(1, d.loadedModules(), "round.fatbin alone");
            Nf4Kernels nf4 = d.nf4();
            assertEquals(2, d.loadedModules());
            assertTrue(nf4 == d.nf4(), "loaded once");
            d.quant();
            d.combine();
            d.extract();
            assertEquals(5, d.loadedModules());
        } finally {
            fresh.close();
        }
    }
}
