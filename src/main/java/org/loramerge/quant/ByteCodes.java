package org.loramerge.quant;

import java.nio.ByteBuffer;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The encoded ranges of a requantizer that writes one byte a code (bitsandbytes int8, FP8), held
 * from {@link Requantizer#encode} until the pipeline takes them with {@link Requantizer#codes}.
 */
final class ByteCodes {
    private final String weightName;
    private final ConcurrentHashMap<Long, byte[]> pending = new ConcurrentHashMap<>();

    ByteCodes(String weightName) {
        this.weightName = weightName;
    }

    /** Keeps the codes of the range that starts at {@code firstElement}. */
    void put(long firstElement, byte[] codes) {
        pending.put(firstElement, codes);
    }

    /** The codes of a range encoded before, handed over once. */
    ByteBuffer take(long firstElement, int count) {
        byte[] c = pending.remove(firstElement);
        if (c == null || c.length != count) {
            throw new IllegalStateException(weightName + ": elements [" + firstElement + ", +" + count + ") were not encoded");
        }
        return ByteBuffer.wrap(c);
    }

    /** One byte a code: a range's codes start at byte firstElement. */
    static long offset(long firstElement) {
        return firstElement;
    }
}
