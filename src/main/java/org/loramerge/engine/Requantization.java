package org.loramerge.engine;

import java.nio.ByteBuffer;
import java.util.List;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.Nf4Requantizer;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantState;

/**
 * A backend's own merge-and-requantize of one NF4 weight ({@code merge --to nf4}), for a backend
 * that dequantizes, merges and requantizes in one place (the GPU engine, where the weight never
 * leaves the device in its wide form). It produces exactly the bytes of the CPU path, which
 * merges with {@link Backend#mergeRows} and requantizes with {@link Nf4Requantizer}.
 */
public interface Requantization extends AutoCloseable {
    /**
     * Merges rows {@code [row0, row0 + rowCount)} (they cover whole NF4 blocks, or run to the end
     * of the weight) and requantizes them. {@code packed} holds the base's packed codes of those
     * rows ({@link org.loramerge.plan.TensorSource#readPacked}). Returns the packed codes of the
     * requantized rows, to be written in order. May be called from several threads at once, for
     * disjoint rows.
     */
    ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer packed, BlockStats stats) throws Exception;

    /** After the last row: the new scales, their double quantization and the survival sums. */
    Result finish() throws Exception;

    @Override
    void close();

    /**
     * The finished weight: its quant state (with the new offset), its absmax ({@code absmax}
     * plain, or {@code dq} when double-quantized) and what the requantization kept.
     */
    record Result(QuantState outputState, float[] absmax, DoubleQuant.Result dq, Nf4Requantizer.Change change) {
        /** The tensors after {@code P.weight}, as {@link Nf4Requantizer#tail}. */
        public List<ByteBuffer> tail(int quantStateBytes) {
            return Nf4Tensor.tail(outputState, absmax, dq, quantStateBytes);
        }
    }
}
