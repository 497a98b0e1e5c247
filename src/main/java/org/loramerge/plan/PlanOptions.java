package org.loramerge.plan;

import org.loramerge.format.DType;

/**
 * Choices that shape the merged checkpoint.
 *
 * @param dtype        output dtype of every floating-point tensor, or null to keep each tensor's own;
 *                     with a quantized base it applies to the tensors that are not quantized (norms,
 *                     embeddings, lm_head, biases), while {@code to} decides the quantized weights
 * @param maxShardSize largest shard in bytes (decimal units, as transformers counts them)
 * @param to           what the quantized weights of a quantized base become; required for such a
 *                     base and null for any other
 */
public record PlanOptions(DType dtype, long maxShardSize, QuantTarget to) {
    public static final long DEFAULT_MAX_SHARD_SIZE = 5_000_000_000L;

    public PlanOptions {
        if (dtype != null && !dtype.isMergeable()) {
            throw new IllegalArgumentException("output dtype must be F32, F16 or BF16, got " + dtype);
        }
        if (maxShardSize <= 0) {
            throw new IllegalArgumentException("max shard size must be positive, got " + maxShardSize);
        }
    }

    /** Options for a base that is not quantized. */
    public PlanOptions(DType dtype, long maxShardSize) {
        this(dtype, maxShardSize, null);
    }

    public static PlanOptions defaults() {
        return new PlanOptions(null, DEFAULT_MAX_SHARD_SIZE);
    }

    /** These options with {@code to} set. */
    public PlanOptions withTarget(QuantTarget target) {
        return new PlanOptions(dtype, maxShardSize, target);
    }
}
