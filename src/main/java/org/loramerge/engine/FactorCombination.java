package org.loramerge.engine;

import java.io.IOException;
import java.util.Arrays;
import java.util.List;
import org.loramerge.format.TensorInfo;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Svd;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.Layout;
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
 *   <li>svd and the *_svd methods: the dense combination Δ in PEFT's B·A layout (the weight's,
 *       transposed for Conv1D and embeddings) truncated by an SVD to rank R: B' = U_R·diag(σ_R),
 *       A' = V_Rᵀ, each pair (u_k, v_k) turned so that the entry of u_k of largest magnitude
 *       (the first, on ties) is positive; then PEFT's svd_clamp, if asked. svd takes the SVD of
 *       the product of the stacked factors (linalg {@code Svd.ofProduct}, exact up to rounding);
 *       the others that of the dense Δ of {@link DenseCombination} (λ = 1) by {@code
 *       RandomizedSvd} where the engine keeps Δ ({@link CombinationDeltas}): its rows recomputed
 *       on the host for each pass (the CPU engine), or formed once on the GPU, whose SVD has the
 *       same algorithm and options but not the same bits (see {@code CudaWeightDelta}).
 *       Components beyond Δ's rank are zero in both factors.</li>
 * </ul>
 */
public final class FactorCombination {
    /** New factors as stored: A' [rank, ...] and B' [..., rank], row-major. */
    public record Factors(double[] a, double[] b, int rank) {
    }

    private FactorCombination() {
    }

    /**
     * The combined factors of {@code u}, whose method has a low-rank result (cat, linear, PEFT's
     * factor-wise methods, or the SVD methods, at the rank {@code u.how().rank()}, which must be set),
     * every step on the host (the CPU engine's).
     */
    public static Factors combine(CombinedUpdate u) throws IOException {
        return combine(u, CombinationDeltas.HOST);
    }

    /** {@link #combine(CombinedUpdate)} with the dense Δ of the {@code _svd} methods formed and decomposed by {@code deltas}. */
    public static Factors combine(CombinedUpdate u, CombinationDeltas deltas) throws IOException {
        CombineMethod method = u.how().method();
        if (method.operand() == CombineMethod.Operand.SVD) {
            Factors f = svd(u, deltas);
            return u.how().svdClamp() == null ? f : clamp(f, u.how().svdClamp());
        }
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

    /**
     * The rank-R truncated SVD of the combination, before any clamp, in PEFT's B·A layout (see the
     * class comment); rank {@code u.how().rank()}, padded with zero components where Δ has fewer.
     * The dense Δ of the methods other than svd is opened by {@code deltas}; svd's product of two
     * thin matrices is decomposed on the host on every engine (QRs of m×R and n×R and an R×R SVD:
     * less work than one pass over a dense Δ, and no Δ is formed).
     */
    public static Factors svd(CombinedUpdate u, CombinationDeltas deltas) throws IOException {
        int rank = u.how().rank();
        if (rank < 1) {
            throw new IllegalArgumentException(u.name() + ": the SVD's rank must be set by the plan");
        }
        List<CombinedUpdate.Part> parts = u.parts();
        TermSpec first = parts.get(0).term();
        long[] aShape = first.a().info().shape();
        long[] bShape = first.b().info().shape();
        int baRows = Math.toIntExact(bShape[0]); // B·A is [B's rows, A's columns], whatever the weight's layout
        int baCols = Math.toIntExact(TensorInfo.numElements(aShape) / aShape[0]);
        boolean transposed = first.layout() == Layout.CONV1D || first.layout() == Layout.EMBEDDING;
        Svd svd;
        if (u.how().method().rule() == CombineMethod.Rule.SUM) {
            // Δ = Σ (w_i·s_i)·B_i·A_i = B_cat·A_cat with the weights on B: the SVD of the product of two thin matrices
            int total = 0;
            for (CombinedUpdate.Part p : parts) {
                total += p.term().rank();
            }
            Matrix b = Matrix.zeros(baRows, total);
            Matrix a = Matrix.zeros(total, baCols);
            int k0 = 0;
            for (CombinedUpdate.Part p : parts) {
                double[][] f = p.term().storedFactors();
                int r = p.term().rank();
                double c = p.weight() * p.term().scale();
                for (int i = 0; i < baRows; i++) {
                    for (int k = 0; k < r; k++) {
                        b.set(i, k0 + k, c * f[1][i * r + k]);
                    }
                }
                System.arraycopy(f[0], 0, a.data(), k0 * baCols, r * baCols);
                k0 += r;
            }
            svd = Svd.ofProduct(b, a);
        } else {
            // the dense Δ in the weight's layout, where the engine keeps it; its transpose is B·A for Conv1D and embeddings
            int rows = transposed ? baCols : baRows;
            int cols = transposed ? baRows : baCols;
            Svd w;
            try (WeightDelta delta = deltas.open(DenseCombination.load(u, rows, cols), rows, cols)) {
                w = delta.svd(rank, RandomizedSvd.Options.defaults(1)).svd();
            }
            svd = transposed ? new Svd(w.vt().transpose(), w.sigma(), w.u().transpose()) : w;
        }
        int k = Math.min(rank, svd.rank());
        double[] bv = new double[baRows * rank];
        double[] av = new double[rank * baCols];
        for (int j = 0; j < k; j++) {
            double sigma = svd.sigma()[j];
            if (sigma == 0) {
                continue; // beyond Δ's rank: a zero component
            }
            // the sign convention: u_j's entry of largest magnitude is positive
            int arg = 0;
            for (int i = 1; i < baRows; i++) {
                if (Math.abs(svd.u().get(i, j)) > Math.abs(svd.u().get(arg, j))) {
                    arg = i;
                }
            }
            double sign = svd.u().get(arg, j) < 0 ? -1 : 1;
            for (int i = 0; i < baRows; i++) {
                bv[i * rank + j] = sign * svd.u().get(i, j) * sigma;
            }
            for (int c = 0; c < baCols; c++) {
                av[j * baCols + c] = sign * svd.vt().get(j, c);
            }
        }
        return new Factors(av, bv, rank);
    }

    /**
     * PEFT's svd_clamp: the {@code q}-quantile of all values of B' and A' together (linear
     * interpolation between the sorted values, as torch.quantile), and every value of both clamped
     * to [−hi, hi].
     */
    public static Factors clamp(Factors f, double q) {
        double[] all = new double[f.b().length + f.a().length];
        System.arraycopy(f.b(), 0, all, 0, f.b().length);
        System.arraycopy(f.a(), 0, all, f.b().length, f.a().length);
        Arrays.sort(all);
        double pos = q * (all.length - 1);
        int lo = (int) Math.floor(pos);
        int hi = Math.min(lo + 1, all.length - 1);
        double hiVal = all[lo] + (pos - lo) * (all[hi] - all[lo]);
        double[] a = f.a().clone();
        double[] b = f.b().clone();
        for (int i = 0; i < a.length; i++) {
            a[i] = Math.max(-hiVal, Math.min(hiVal, a[i]));
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = Math.max(-hiVal, Math.min(hiVal, b[i]));
        }
        return new Factors(a, b, f.rank());
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
