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
    BIAS,
    /**
     * One expert's slice of PEFT's ParamWrapper on a fused expert parameter [E, d1, d2] (target_parameters):
     * lora_A [r·E, in], lora_B [out, r·E], expert e takes A's rows e·r … e·r + r − 1 and B's columns
     * e, e + E, … (FORMATS.md §3); the term covers the rows its {@link ExpertSlice} names.
     */
    EXPERT
}
