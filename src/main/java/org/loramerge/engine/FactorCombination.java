package org.loramerge.engine;

import java.io.IOException;
import java.util.List;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.TermSpec;

/**
 * PEFT's factor-wise combinations of one module (peft tuners/lora/model.py
 * {@code add_weighted_adapter}, docs/FORMATS.md §8), in float64: the new factors A' and B' in the
 * layout the adapter stores them (A [r, ...], B [..., r], row-major), with the new scale 1.
 *
 * <ul>
 *   <li>cat: A' stacks the A_i·(w_i·s_i) (one rounding each) as rows, B' puts the B_i side by
 *       side, in adapter order; rank Σ r_i, and B'·A' = Σ w_i·s_i·B_i·A_i.</li>
 *   <li>linear, ties, dare_linear, dare_ties, magnitude_prune: with c_i = w_i·s_i, the A_i are
 *       combined with the weights sign(c_i)·sqrt(|c_i|) and the B_i with sqrt(|c_i|), each factor
 *       tensor separately by {@link Elementwise#combineTensors} (DARE's masks keyed by
 *       {@code <module>.lora_A} and {@code <module>.lora_B}); all ranks equal. For linear
 *       B'·A' = Σ_i Σ_j sqrt(|c_i c_j|)·sign(c_j)·B_i·A_j: the cross terms are PEFT's.</li>
 * </ul>
 */
public final class FactorCombination {
    /** New factors as stored: A' [rank, ...] and B' [..., rank], row-major. */
    public record Factors(double[] a, double[] b, int rank) {
    }

    private FactorCombination() {
    }

    /** The combined factors of {@code u} (its method must work on the factors: cat, linear, or PEFT's factor-wise ones). */
    public static Factors combine(CombinedUpdate u) throws IOException {
        CombineMethod method = u.how().method();
        if (method.operand() != CombineMethod.Operand.FACTORS) {
            throw new IllegalArgumentException(method + " does not combine factors");
        }
        List<CombinedUpdate.Part> parts = u.parts();
        int n = parts.size();
        double[][] as = new double[n][];
        double[][] bs = new double[n][];
        int[] ranks = new int[n];
        int[] adapters = new int[n];
        for (int i = 0; i < n; i++) {
            TermSpec t = parts.get(i).term();
            double[][] f = t.storedFactors();
            as[i] = f[0];
            bs[i] = f[1];
            ranks[i] = t.rank();
            adapters[i] = parts.get(i).adapter();
        }
        if (method == CombineMethod.CAT) {
            return cat(parts, as, bs, ranks);
        }
        double[] wa = new double[n];
        double[] wb = new double[n];
        for (int i = 0; i < n; i++) {
            // peft: weight_with_scaling = weight * scaling; sqrt(|c|) on both sides, the sign only on A
            double c = parts.get(i).weight() * parts.get(i).term().scale();
            double root = Math.sqrt(Math.abs(c));
            wa[i] = c >= 0 ? root : -root;
            wb[i] = root;
            if (ranks[i] != ranks[0]) {
                throw new IllegalStateException(u.module() + ": the plan lets only equal ranks through to " + method);
            }
        }
        CombineMethod.Rule rule = method.rule();
        double[] a = Elementwise.combineTensors(rule, u.how(), u.module() + ".lora_A", as, wa, adapters);
        double[] b = Elementwise.combineTensors(rule, u.how(), u.module() + ".lora_B", bs, wb, adapters);
        return new Factors(a, b, ranks[0]);
    }

    private static Factors cat(List<CombinedUpdate.Part> parts, double[][] as, double[][] bs, int[] ranks) {
        int n = parts.size();
        int rank = 0;
        for (int r : ranks) {
            rank += r;
        }
        int rest = as[0].length / ranks[0];
        int out = bs[0].length / ranks[0];
        double[] a = new double[rank * rest];
        double[] b = new double[out * rank];
        int k0 = 0;
        for (int i = 0; i < n; i++) {
            double c = parts.get(i).weight() * parts.get(i).term().scale(); // w·s in double, as PEFT's Python does
            int r = ranks[i];
            for (int e = 0; e < r * rest; e++) {
                a[k0 * rest + e] = as[i][e] * c;
            }
            for (int o = 0; o < out; o++) {
                System.arraycopy(bs[i], o * r, b, o * rank + k0, r);
            }
            k0 += r;
        }
        return new Factors(a, b, rank);
    }
}
