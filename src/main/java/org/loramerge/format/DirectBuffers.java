package org.loramerge.format;

import java.lang.reflect.Field;
import java.nio.ByteBuffer;

/**
 * Freeing a direct or mapped buffer at once rather than when the garbage collector gets to it, with
 * {@code sun.misc.Unsafe#invokeCleaner} where this JVM has it: a mapped window is unmapped as it is
 * closed ({@link MappedRegion}), and page-locked memory of the GPU engine goes back when it is freed.
 */
public final class DirectBuffers {
    private static final sun.misc.Unsafe UNSAFE = loadUnsafe();

    private DirectBuffers() {
    }

    /** Whether {@link #free} frees at once; where not, the garbage collector frees the buffer some time later. */
    public static boolean canFree() {
        return UNSAFE != null;
    }

    /**
     * Frees {@code buffer} (a direct or mapped buffer as allocated or mapped, not a slice or a duplicate
     * of one) at once where {@link #canFree}, else leaves it to the garbage collector. It must not be
     * used after.
     */
    public static void free(ByteBuffer buffer) {
        if (UNSAFE != null && buffer.capacity() > 0) {
            UNSAFE.invokeCleaner(buffer);
        }
    }

    /** The size of a page of memory, 4096 where it cannot be asked. */
    public static int pageSize() {
        return UNSAFE == null ? 4096 : UNSAFE.pageSize();
    }

    private static sun.misc.Unsafe loadUnsafe() {
        try {
            Field f = sun.misc.Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            return (sun.misc.Unsafe) f.get(null);
        } catch (ReflectiveOperationException | RuntimeException e) {
            return null;
        }
    }
}
