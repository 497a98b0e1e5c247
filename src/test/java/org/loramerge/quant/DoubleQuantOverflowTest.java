package org.loramerge.quant;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.loramerge.format.DType;

/**
 * Review: bitsandbytes' double quantization offset fl32(fl32(S)·fl32(1/n)) is infinite when the
 * block absmax values sum past fp32's range even though their mean is representable; writing such an
 * offset is refused as bad input (a {@link QuantException}), never an IllegalArgumentException.
 */
class DoubleQuantOverflowTest {
    private static final float BIG = 0x1.8p127f; // a bf16 value: two of them sum past Float.MAX_VALUE

    @Test
    void offsetOfAbsmaxSummingPastFp32IsInfiniteAsTorchsMean() {
        assertEquals(Float.POSITIVE_INFINITY, DoubleQuant.offset(new float[] {BIG, BIG}, 2));
        // the largest sum that still rounds to a finite fp32 stays finite
        assertEquals(Float.MAX_VALUE * (1f / 2f), DoubleQuant.offset(new float[] {Float.MAX_VALUE, 0f}, 2));
    }

    @Test
    void requireFiniteOffsetIsTyped() throws QuantException {
        assertEquals(0.5f, DoubleQuant.requireFiniteOffset(0.5f, 2, Path.of("m.safetensors"), "w", "do this"));
        QuantException e = assertThrows(QuantException.class,
                () -> DoubleQuant.requireFiniteOffset(Float.POSITIVE_INFINITY, 2, Path.of("m.safetensors"), "w", "do this"));
        assertEquals(QuantException.Reason.NON_FINITE, e.reason());
        assertTrue(e.getMessage().contains("m.safetensors") && e.getMessage().contains("do this"), e.getMessage());
    }

    @Test
    void requantizingAMergedWeightWhoseAbsmaxSumOverflowsIsRefused() throws QuantException {
        QuantState state = QuantState.of(32, DType.F32, new long[] {2, 32}, new QuantState.Nested(256, 0f));
        Nf4Requantizer r = new Nf4Requantizer("layer.weight", Path.of("base.safetensors"), state);
        ByteBuffer merged = ByteBuffer.allocate(64 * 4).order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer base = ByteBuffer.allocate(64 * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < 64; i++) {
            merged.putFloat(i * 4, BIG);
            base.putFloat(i * 4, 1f);
        }
        r.encode(0, 64, merged, base, new double[64]);
        QuantException e = assertThrows(QuantException.class, r::finish);
        assertEquals(QuantException.Reason.NON_FINITE, e.reason());
        assertTrue(e.getMessage().contains("layer.weight"), e.getMessage());
    }
}
