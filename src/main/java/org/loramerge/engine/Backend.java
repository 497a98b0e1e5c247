package org.loramerge.engine;

import java.nio.ByteBuffer;

/**
 * An engine that merges blocks of rows. The pipeline reads, orders and writes; a backend only
 * computes, and every backend must produce the bytes the CPU reference produces.
 */
public interface Backend extends AutoCloseable {
    /** What runs the merge, for the user: "cpu (16 threads)", "cuda:0 NVIDIA H200". */
    String describe();

    /** How many blocks the pipeline should keep in flight on this backend at once. */
    int parallelism();

    /**
     * A buffer for output blocks, which the pipeline reuses until the backend is closed. The GPU
     * engine hands out page-locked memory so results come back from the device without a copy.
     */
    default java.nio.ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        return java.nio.ByteBuffer.allocateDirect(sizeInBytes).order(java.nio.ByteOrder.LITTLE_ENDIAN);
    }

    /** Called once before the first block of a tensor (e.g. to upload its factors). */
    default void beginTensor(TensorJob job) throws Exception {
    }

    /** Called once after the last block of a tensor. */
    default void endTensor(TensorJob job) throws Exception {
    }

    /**
     * Merges rows [row0, row0 + rowCount) of {@code job}: {@code src} holds those rows of the source
     * tensor, {@code dst} receives them in the output dtype. May be called from several threads.
     */
    void mergeRows(TensorJob job, long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) throws Exception;

    /**
     * True when {@link #mergeRows} takes an NF4 source's packed codes
     * ({@link org.loramerge.plan.TensorSource#readPacked}) instead of its dequantized values.
     */
    default boolean readsPacked(TensorJob job) {
        return false;
    }

    /**
     * For an NF4 output ({@code merge --to nf4}): this backend's own merge and requantization of
     * the weight, or null to have the pipeline merge with {@link #mergeRows} and requantize on the
     * CPU. Called after {@link #beginTensor}; the pipeline closes it before {@link #endTensor}.
     */
    default Requantization requantize(TensorJob job) throws Exception {
        return null;
    }

    /** First pass of a column-axis DoRA tensor: see {@link org.loramerge.engine.cpu.CpuMerge#columnSums}. */
    void columnSums(TensorJob job, long row0, int rowCount, ByteBuffer src, double[] sumSq, double[] sumErr) throws Exception;

    @Override
    void close();
}
