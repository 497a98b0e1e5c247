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
        double[] bv = b.readDoubles();
        if (layout == Layout.BIAS) {
            return new double[][] {bv, {1.0}};
        }
        return uv(layout, rank, a.readDoubles(), bv, rows, cols);
    }

    /**
     * The factors as stored in the adapter, read exactly: {@code {A, B}} row-major, A [r, rest]
     * (lora_A, lora_embedding_A) and B [out, r] (lora_B, lora_embedding_B), whatever the layout.
     */
    public double[][] storedFactors() throws IOException {
        if (layout == Layout.BIAS) {
            throw new IllegalStateException(module + ": a bias term has no stored factor pair");
        }
        return new double[][] {a.readDoubles(), b.readDoubles()};
    }

    /**
     * Stored factors A [r, ...] and B [..., r] (row-major) rearranged into U [rows, r] and Vᵀ
     * [r, cols] of the weight's matrix view [rows, cols] (docs/FORMATS.md §3).
     */
    public static double[][] uv(Layout layout, int rank, double[] av, double[] bv, long rows, long cols) {
        int m = Math.toIntExact(rows);
        int n = Math.toIntExact(cols);
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

    /** This term with another scale (a weight folded in). */
    public TermSpec withScale(double newScale) {
        return new TermSpec(module, layout, a, b, rank, newScale);
    }

    /** The rank of the term as U·Vᵀ: 1 for a bias term. */
    public int factorRank() {
        return layout == Layout.BIAS ? 1 : rank;
    }
}
