package org.loramerge.plan;

/**
 * How a LoRA pair maps onto the base weight seen as a matrix [shape[0], rest], as
 * ΔW = s · U·Vᵀ with U [rows, r] and V [cols, r] (FORMATS.md §3).
 */
public enum Layout {
    /** nn.Linear W [out, in]; also Conv W [out, in/g, k...] flattened: U = B [out, r], Vᵀ = A [r, in·k]. */
    LINEAR,
    /** transformers Conv1D (GPT-2, fan_in_fan_out) W [in, out]: ΔW = (B·A)ᵀ, so U = Aᵀ, Vᵀ = Bᵀ. */
    CONV1D,
    /** nn.Embedding W [vocab, dim], lora_embedding_A [r, vocab], lora_embedding_B [dim, r]: ΔW = (B·A)ᵀ, U = Aᵀ, Vᵀ = Bᵀ. */
    EMBEDDING,
    /** lora_bias: bias [out] += s · lora_B.bias, a rank-1 term with V = [1]. */
    BIAS
}
