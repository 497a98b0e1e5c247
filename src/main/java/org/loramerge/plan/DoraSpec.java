package org.loramerge.plan;

/**
 * DoRA's magnitude rescaling W' = (m / ‖W + ΔW‖) · (W + ΔW) (peft tuners/lora/dora.py), with the
 * norm taken per row or per column of the matrix view.
 */
public record DoraSpec(Axis axis, TensorSource magnitude) {
    public enum Axis {
        /** Linear and Conv: one norm per output row (channel). */
        ROW,
        /** GPT-2 Conv1D (W [in, out]) and Embedding: one norm per column. */
        COLUMN
    }
}
