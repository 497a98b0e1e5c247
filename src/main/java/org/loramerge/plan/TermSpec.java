package org.loramerge.plan;

/**
 * One low-rank update of an output tensor: which adapter tensors, in which layout, with which scale.
 *
 * @param module the PEFT module name (for reports)
 * @param a      lora_A / lora_embedding_A; null for {@link Layout#BIAS}
 * @param b      lora_B / lora_embedding_B / lora_B.bias
 * @param rank   r of this module
 * @param scale  s = alpha / r (or alpha / sqrt(r) with rsLoRA), as PEFT computes it in double
 */
public record TermSpec(String module, Layout layout, TensorSource a, TensorSource b, int rank, double scale) {
}
