package org.loramerge.engine;

import java.util.Arrays;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;

/**
 * The per-element rules of the combination methods (docs/FORMATS.md §8), as PEFT's
 * utils/merge_utils.py defines them, in float64 with a fixed order of operations so that every
 * engine gets the same bits: the weighted sum, and TIES' sign election with its disjoint mean.
 * Also the whole-tensor form for small tensors (the factors of PEFT's factor-wise methods).
 */
public final class Elementwise {
    private Elementwise() {
    }

    /**
     * Combines the kept values {@code t[0..n)} (0 where dropped) of one element with weights
     * {@code w}: Σ w_a·t_a from +0.0 in order for the summing rules; for TIES the adapters whose
     * value has the elected sign (+ when Σ t_a ≥ 0, or when at least as many are positive as
     * negative; zero never agrees) give (Σ w_a·t_a) / max(count, 1).
     */
    public static double combine(CombineMethod.Rule rule, Combination.MajoritySign majority, double[] t, double[] w, int n) {
        if (rule != CombineMethod.Rule.TIES && rule != CombineMethod.Rule.DARE_TIES) {
            double acc = 0.0;
            for (int a = 0; a < n; a++) {
                acc += w[a] * t[a];
            }
            return acc;
        }
        boolean positive;
        if (majority == Combination.MajoritySign.TOTAL) {
            double m = 0.0;
            for (int a = 0; a < n; a++) {
                m += t[a];
            }
            positive = m >= 0;
        } else {
            int m = 0;
            for (int a = 0; a < n; a++) {
                m += t[a] > 0 ? 1 : t[a] < 0 ? -1 : 0;
            }
            positive = m >= 0;
        }
        double acc = 0.0;
        int count = 0;
        for (int a = 0; a < n; a++) {
            if (positive ? t[a] > 0 : t[a] < 0) {
                acc += w[a] * t[a];
                count++;
            }
        }
        return acc / Math.max(count, 1);
    }

    /** True for the rules that keep the top D by magnitude. */
    public static boolean selectsByMagnitude(CombineMethod.Rule rule) {
        return rule == CombineMethod.Rule.MAGNITUDE || rule == CombineMethod.Rule.TIES;
    }

    /** True for DARE's rules. */
    public static boolean dropsAtRandom(CombineMethod.Rule rule) {
        return rule == CombineMethod.Rule.DARE || rule == CombineMethod.Rule.DARE_TIES;
    }

    /**
     * The rule applied to whole small tensors of equal length (PEFT applies its methods to each
     * factor tensor this way): each input trimmed (top D by magnitude, ties to the lower index) or
     * dropped at random (keyed by {@code name} and {@code adapters[i]}), then combined element by
     * element. Returns a new array.
     */
    public static double[] combineTensors(CombineMethod.Rule rule, Combination how, String name, double[][] inputs, double[] weights,
                                          int[] adapters) {
        int n = inputs.length;
        int len = inputs[0].length;
        double[][] kept = new double[n][];
        for (int a = 0; a < n; a++) {
            kept[a] = trim(rule, how, name, inputs[a], adapters[a]);
        }
        double[] out = new double[len];
        double[] t = new double[n];
        for (int e = 0; e < len; e++) {
            for (int a = 0; a < n; a++) {
                t[a] = kept[a][e];
            }
            out[e] = combine(rule, how.majority(), t, weights, n);
        }
        return out;
    }

    private static double[] trim(CombineMethod.Rule rule, Combination how, String name, double[] x, int adapter) {
        double density = how.density();
        if (density >= 1 || !(selectsByMagnitude(rule) || dropsAtRandom(rule))) {
            return x;
        }
        double[] out = new double[x.length];
        if (dropsAtRandom(rule)) {
            long key = DareMask.key(how.seed(), name, adapter);
            for (int e = 0; e < x.length; e++) {
                out[e] = DareMask.keep(key, e, density) ? x[e] / density : 0.0;
            }
            return out;
        }
        long k = (long) (density * x.length);
        Integer[] order = new Integer[x.length];
        for (int e = 0; e < x.length; e++) {
            order[e] = e;
        }
        // by magnitude, largest first; equal magnitudes by index (a stable sort keeps index order)
        Arrays.sort(order, (p, q) -> Long.compare(TopSelection.key(x[q]), TopSelection.key(x[p])));
        for (int i = 0; i < k; i++) {
            out[order[i]] = x[order[i]];
        }
        return out;
    }
}
