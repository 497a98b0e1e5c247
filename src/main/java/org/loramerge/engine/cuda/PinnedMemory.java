package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.concurrent.atomic.AtomicLong;
import jcuda.CudaException;
import jcuda.Pointer;
import jcuda.runtime.JCuda;
import org.loramerge.format.DirectBuffers;

/**
 * Page-locked host memory, so copies to and from the device run at full PCIe speed.
 *
 * <p>The pages are a direct buffer of Java's, whole pages of their own, touched as Java zeroes
 * them and then registered with the driver ({@code cudaHostRegister}). Registering scales with the
 * threads that do it, where {@code cudaHostAlloc} holds the driver for the whole allocation: on the
 * H200 machine 26 blocks of 8 MiB took 70-130 ms by {@code cudaHostAlloc} from 1 to 26 threads, and
 * 16-24 ms registered from 13 or 26 (scripts/bench/startup_bounds.cu; benchmarks/RESULTS.md,
 * 2026-12-01, start-up). Registered memory is held to half the JVM's heap limit (direct buffers
 * count against a limit of that size by default); beyond that, where registering fails, or where
 * this JVM has no {@code sun.misc.Unsafe} to free a direct buffer with, the memory comes from
 * {@code cudaHostAlloc}.
 */
public final class PinnedMemory implements AutoCloseable {
    private static final int PAGE = DirectBuffers.pageSize();
    /** Bytes of registered direct buffers this process may hold at once. */
    private static final long REGISTERED_LIMIT = Runtime.getRuntime().maxMemory() / 2;
    private static final AtomicLong REGISTERED = new AtomicLong();
    /**
     * Whether Java refused a direct buffer (a -XX:MaxDirectMemorySize below the limit above): the
     * JVM collects garbage and waits before each such refusal, so after one every block comes from
     * cudaHostAlloc at once.
     */
    private static volatile boolean directRefused;

    private final Pointer pointer;
    private final long sizeInBytes;
    private final ByteBuffer buffer;
    /** The direct buffer the registered pages lie in, null for memory from cudaHostAlloc. */
    private final ByteBuffer allocation;
    private boolean closed;

    public PinnedMemory(long sizeInBytes) {
        this.sizeInBytes = Math.max(sizeInBytes, 8);
        ByteBuffer direct = registered(this.sizeInBytes);
        if (direct != null) {
            this.allocation = direct;
            this.pointer = Pointer.to(direct.alignedSlice(PAGE));
        } else {
            this.allocation = null;
            this.pointer = new Pointer();
            JCuda.cudaHostAlloc(pointer, this.sizeInBytes, JCuda.cudaHostAllocDefault);
        }
        this.buffer = pointer.getByteBuffer(0, this.sizeInBytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * A direct buffer with whole pages for {@code size} bytes from its first page boundary on,
     * registered; or null where that cannot be done.
     */
    private static ByteBuffer registered(long size) {
        long pages = pagesFor(size);
        long bytes = pages + PAGE;
        if (!DirectBuffers.canFree() || directRefused || bytes > Integer.MAX_VALUE) {
            return null;
        }
        ByteBuffer direct = REGISTERED.addAndGet(bytes) <= REGISTERED_LIMIT ? allocateAndRegister(bytes, pages) : null;
        if (direct == null) {
            REGISTERED.addAndGet(-bytes);
        }
        return direct;
    }

    /** A direct buffer of {@code bytes} whose {@code pages} from its first page boundary on are registered; null where that fails. */
    private static ByteBuffer allocateAndRegister(long bytes, long pages) {
        ByteBuffer direct;
        try {
            direct = ByteBuffer.allocateDirect(Math.toIntExact(bytes));
        } catch (OutOfMemoryError e) {
            directRefused = true;
            return null;
        }
        try {
            JCuda.cudaHostRegister(Pointer.to(direct.alignedSlice(PAGE)), pages, JCuda.cudaHostRegisterDefault);
            return direct;
        } catch (CudaException e) {
            try {
                // the runtime keeps a failed call's error as this thread's last error until read: read
                // here, so that nothing later on the thread (cuBLAS checks it) takes it for its own
                JCuda.cudaGetLastError();
            } catch (CudaException cleared) {
                // the error just reported, now reset
            }
            DirectBuffers.free(direct);
            return null;
        }
    }

    /** Bytes of the whole pages that hold {@code size} bytes. */
    static long pagesFor(long size) {
        return (size + PAGE - 1) / PAGE * PAGE;
    }

    /** Whether the pages were registered (else they came from cudaHostAlloc). */
    boolean isRegistered() {
        return allocation != null;
    }

    public Pointer pointer() {
        if (closed) {
            throw new IllegalStateException("pinned memory used after close");
        }
        return pointer;
    }

    /** A view of the whole buffer, little-endian, positioned at 0. */
    public ByteBuffer buffer() {
        if (closed) {
            throw new IllegalStateException("pinned memory used after close");
        }
        return buffer.duplicate().order(ByteOrder.LITTLE_ENDIAN);
    }

    public long sizeInBytes() {
        return sizeInBytes;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("pinned memory freed twice");
        }
        closed = true;
        if (allocation != null) {
            JCuda.cudaHostUnregister(pointer);
            DirectBuffers.free(allocation);
            REGISTERED.addAndGet(-(allocation.capacity()));
        } else {
            JCuda.cudaFreeHost(pointer);
        }
    }
}
