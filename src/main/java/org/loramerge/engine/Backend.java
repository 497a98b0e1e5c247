package org.loramerge.engine;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.plan.TensorSource;

/**
 * An engine that computes output tensors block by block. The pipeline reads, orders and writes;
 * a backend only computes, and every backend must produce the bytes the CPU reference produces.
 *
 * <p>What a backend can do is explicit: for every planned tensor it opens a {@link TensorMerge}
 * (a dense output) or a {@link Requantization} (a quantized output), and each says which bytes of
 * the source it reads ({@link TensorMerge#input()}). A backend that cannot compute some tensor on
 * its own device hands back the CPU engine's handle for it.
 */
public interface Backend extends AutoCloseable {
    /** Output bytes per row block the pipeline streams by default. */
    int DEFAULT_BLOCK_BYTES = 8 << 20;

    /** What runs the merge, for the user: "cpu (16 threads)", "cuda:0 NVIDIA H200". */
    String describe();

    /** How many blocks the pipeline should keep in flight on this backend at once. */
    int parallelism();

    /**
     * A buffer for output blocks, which the pipeline reuses until the backend is closed. The GPU
     * engine hands out page-locked memory so results come back from the device without a copy.
     */
    default ByteBuffer allocateBlockBuffer(int sizeInBytes) {
        return ByteBuffer.allocateDirect(sizeInBytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** {@code count} buffers of {@link #allocateBlockBuffer}; the GPU engine makes them on several threads at once. */
    default List<ByteBuffer> allocateBlockBuffers(int count, int sizeInBytes) {
        List<ByteBuffer> out = new ArrayList<>(count);
        for (int i = 0; i < count; i++) {
            out.add(allocateBlockBuffer(sizeInBytes));
        }
        return out;
    }

    /**
     * Whether the pipeline should read a dense tensor's rows by positional reads into this backend's
     * block buffers rather than map them: where those buffers are page-locked (a GPU), the read is then
     * the only copy on the way up, where a mapping's rows would be copied into them first. The CPU engine
     * merges straight from a mapping.
     */
    default boolean readsIntoBlockBuffers() {
        return false;
    }

    /**
     * Starts a dense output tensor (merged, replaced, converted or dequantized): its factors go
     * where the backend computes. The pipeline closes the handle after the last block; closing the
     * backend closes any handle a failed merge left open.
     */
    TensorMerge openMerge(TensorJob job) throws Exception;

    /**
     * Opens ΔW = tuned − base of one weight [rows, cols] for {@code extract}'s SVD, formed and
     * checked ({@link WeightDelta}); {@code name} names the weight in messages. May be called from
     * another thread than the one that uses the result (extract opens the next weight while this
     * one is decomposed). NaN or ±Inf in either weight is an {@code ExtractException}.
     */
    WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) throws Exception;

    /**
     * Opens the dense combination Δ of one of PEFT's {@code _svd} methods, a tensor [rows, cols] in
     * the weight's layout, for its truncated SVD ({@link FactorCombination#svd}): formed and decomposed
     * where this engine computes ({@link CombinationDeltas}). Its selections may still be open; the
     * handle makes them. May be called from several threads at once, one combination each. A GPU
     * engine whose device has no room for Δ (or, later, for its SVD) throws {@link
     * DeviceOutOfMemoryException}, and the caller may decompose it on the host ({@link
     * CombinationDeltas#HOST}) instead.
     */
    WeightDelta openCombination(DenseCombination dense, int rows, int cols) throws IOException;

    /**
     * How many weights {@code extract} decomposes at once on this engine, each on its own thread.
     * The CPU engine's SVD already uses every core for one weight; the GPU engine's leaves the
     * device idle during its host steps (the small Cholesky factors and SVD, the sketches'
     * transfers), which other weights' passes fill.
     */
    default int deltaDecompositions() {
        return 1;
    }

    /** How many weights {@code extract} forms ahead of those being decomposed (open at once: these plus {@link #deltaDecompositions}). */
    default int deltasAhead() {
        return 1;
    }

    /** Starts a weight that is merged and requantized ({@code merge --to nf4}); closed as {@link #openMerge}'s. */
    Requantization openRequantization(TensorJob job) throws Exception;

    @Override
    void close();
}
