package org.loramerge.plan;

/** trainable_token_indices: rows {@code indices} of the embedding are replaced by the rows of {@code values} [k, dim]. */
public record TokenRows(long[] indices, TensorSource values) {
}
