package org.loramerge.plan;

import java.io.IOException;

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
    /**
     * The factors as ΔW = scale · U·Vᵀ for the weight viewed as [rows, cols]: {@code {U, Vᵀ}},
     * U [rows, r] and Vᵀ [r, cols] row-major, read exactly into doubles and rearranged from the
     * layout's own (docs/FORMATS.md §3). A bias term is rank 1 with Vᵀ = [1].
     */
    public double[][] factors(long rows, long cols) throws IOException {
        int m = Math.toIntExact(rows);
        int n = Math.toIntExact(cols);
        double[] bv = b.readDoubles();
        if (layout == Layout.BIAS) {
            return new double[][] {bv, {1.0}};
        }
        double[] av = a.readDoubles();
        switch (layout) {
            case LINEAR:
                return new double[][] {bv, av}; // B [out, r(,1...)] is U; A [r, in(,k...)] is Vᵀ
            case CONV1D:
            case EMBEDDING: {
                // W [rows, cols] gets (B·A)ᵀ with A [r, rows] and B [cols, r]: U = Aᵀ, Vᵀ = Bᵀ
                int r = rank;
                double[] u = new double[m * r];
                for (int k = 0; k < r; k++) {
                    for (int i = 0; i < m; i++) {
                        u[i * r + k] = av[k * m + i];
                    }
                }
                double[] vt = new double[r * n];
                for (int j = 0; j < n; j++) {
                    for (int k = 0; k < r; k++) {
                        vt[k * n + j] = bv[j * r + k];
                    }
                }
                return new double[][] {u, vt};
            }
            default:
                throw new IllegalStateException(layout.toString());
        }
    }

    /** The rank of the term as U·Vᵀ: 1 for a bias term. */
    public int factorRank() {
        return layout == Layout.BIAS ? 1 : rank;
    }
}
