package org.loramerge.plan;

import org.loramerge.format.DType;

/**
 * Choices that shape the merged checkpoint.
 *
 * @param dtype        output dtype of every floating-point tensor, or null to keep each tensor's own
 * @param maxShardSize largest shard in bytes (decimal units, as transformers counts them)
 */
public record PlanOptions(DType dtype, long maxShardSize) {
    public static final long DEFAULT_MAX_SHARD_SIZE = 5_000_000_000L;

    public PlanOptions {
        if (dtype != null && !dtype.isMergeable()) {
            throw new IllegalArgumentException("output dtype must be F32, F16 or BF16, got " + dtype);
        }
        if (maxShardSize <= 0) {
            throw new IllegalArgumentException("max shard size must be positive, got " + maxShardSize);
        }
    }

    public static PlanOptions defaults() {
        return new PlanOptions(null, DEFAULT_MAX_SHARD_SIZE);
    }
}
