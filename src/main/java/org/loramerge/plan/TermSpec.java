package org.loramerge.plan;

import java.io.IOException;

/**
 * One low-rank update of an output tensor: which adapter tensors, in which layout, with which scale.
 *
 * @param module the PEFT module name (for reports); for LoRA on a parameter, the parameter's name
 * @param a      lora_A / lora_embedding_A; null for {@link Layout#BIAS}
 * @param b      lora_B / lora_embedding_B / lora_B.bias
 * @param rank   r of this module
 * @param scale  s = alpha / r (or alpha / sqrt(r) with rsLoRA), as PEFT computes it in double
 * @param slice  for {@link Layout#EXPERT}, which expert's rows the term updates; null otherwise
 */
public record TermSpec(String module, Layout layout, TensorSource a, TensorSource b, int rank, double scale, ExpertSlice slice) {
    public TermSpec {
        if ((layout == Layout.EXPERT) != (slice != null)) {
            throw new IllegalArgumentException(module + ": an expert slice goes with the EXPERT layout, and only there");
        }
    }

    /** A term on the whole weight. */
    public TermSpec(String module, Layout layout, TensorSource a, TensorSource b, int rank, double scale) {
        this(module, layout, a, b, rank, scale, null);
    }

    /** One expert's slice of a ParamWrapper pair on a fused expert parameter (target_parameters). */
    public static TermSpec expert(String parameter, TensorSource a, TensorSource b, int rank, double scale, ExpertSlice slice) {
        return new TermSpec(parameter, Layout.EXPERT, a, b, rank, scale, slice);
    }

    /** The first row of the output matrix the term updates. */
    public long firstRow() {
        return slice == null ? 0 : slice.outputRow0();
    }

    /**
     * The factors as ΔW = scale · U·Vᵀ for the weight viewed as [rows, cols]: {@code {U, Vᵀ}},
     * U [rows, r] and Vᵀ [r, cols] row-major, read exactly into doubles and rearranged from the
     * layout's own (docs/FORMATS.md §3). A bias term is rank 1 with Vᵀ = [1]. An expert term's U
     * has only the rows of its slice, from {@link #firstRow()} on.
     */
    public double[][] factors(long rows, long cols) throws IOException {
        if (layout == Layout.EXPERT) {
            return expertFactors(Math.toIntExact(cols));
        }
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

    /**
     * peft tuners/lora/layer.py ParamWrapper.get_delta_weight: A [r·E, in] reshaped to [E, r, in]
     * gives expert e the rows e·r + k; B [out, r·E] reshaped to [out, r, E] gives it the columns
     * k·E + e. ΔW[e] is B_e·A_e [out, in], or its transpose for an [E, in, out] parameter. Only the
     * slice's elements are read.
     */
    private double[][] expertFactors(int cols) throws IOException {
        int r = rank;
        int e = slice.expert();
        int experts = slice.experts();
        int rows = Math.toIntExact(slice.rows());
        if (!slice.transposed()) {
            // [E, out, in]: U = B_e's rows, Vᵀ = A_e
            double[] u = b.gather(slice.expertRow0(), rows, e, r, experts);
            double[] vt = a.gather((long) e * r, r, 0, cols, 1);
            return new double[][] {u, vt};
        }
        // [E, in, out]: ΔW[e] = (B_e·A_e)ᵀ, so U = A_eᵀ (A_e's columns of the slice's rows), Vᵀ = B_eᵀ
        double[] at = a.gather((long) e * r, r, slice.expertRow0(), rows, 1); // [r, rows]
        double[] bt = b.gather(0, cols, e, r, experts); // [cols, r]
        double[] u = new double[rows * r];
        for (int k = 0; k < r; k++) {
            for (int i = 0; i < rows; i++) {
                u[i * r + k] = at[k * rows + i];
            }
        }
        double[] vt = new double[r * cols];
        for (int j = 0; j < cols; j++) {
            for (int k = 0; k < r; k++) {
                vt[k * cols + j] = bt[j * r + k];
            }
        }
        return new double[][] {u, vt};
    }

    /** The same term with the opposite sign, −s·U·Vᵀ: what an unmerge subtracts (negation is exact). */
    public TermSpec negated() {
        return new TermSpec(module, layout, a, b, rank, -scale, slice);
    }

    /** This term with another scale (a weight folded in). */
    public TermSpec withScale(double newScale) {
        return new TermSpec(module, layout, a, b, rank, newScale, slice);
    }

    /** The rank of the term as U·Vᵀ: 1 for a bias term. */
    public int factorRank() {
        return layout == Layout.BIAS ? 1 : rank;
    }
}
