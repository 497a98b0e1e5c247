package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;

/**
 * One quantized weight of a checkpoint: a group of stored tensors that together hold the values
 * of a {@link #shape()} weight in {@link #dtype()}. Safe to share between threads.
 */
public interface QuantizedWeight {
    /** The name of the dequantized weight, {@code P.weight}. */
    String weightName();

    /**
     * Its quantization, as {@code merge --to} names it: {@code nf4}, {@code fp4}, {@code int8},
     * {@code fp8}, {@code gptq} or {@code awq}.
     */
    String kind();

    /** The dtype its values dequantize to (the quant state's compute dtype). */
    DType dtype();

    long[] shape();

    long numElements();

    /** Every stored tensor of the group, the codes first. */
    List<String> tensorNames();

    /** The file that holds the codes (for messages and for reading). */
    SafetensorsFile file();

    /** One line for {@code inspect} and reports: format, settings, dtype and shape. */
    String describe();

    /**
     * Dequantizes elements {@code [firstElement, firstElement + count)} of the flattened weight
     * into {@code dst} as little-endian {@link #dtype()} bits, from its position 0: the values
     * the format's reference library returns.
     */
    void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException;

    /**
     * The stored codes of elements {@code [firstElement, firstElement + count)}, memory-mapped,
     * for an engine that dequantizes on its own; the format says where in the region the first
     * element lies.
     */
    MappedRegion storedCodes(long firstElement, int count) throws IOException;

    /**
     * What this weight becomes when merged and requantized with its own format and settings; only
     * for the kinds the planner requantizes ({@code Planner.REQUANTIZABLE}) and when
     * {@link #whyNotRequantizable} is empty.
     */
    QuantizedOutput requantizedOutput();

    /** Why this weight of a requantizable kind cannot be requantized with its own settings (a variant loramerge does not write), if so. */
    default java.util.Optional<String> whyNotRequantizable() {
        return java.util.Optional.empty();
    }
}
