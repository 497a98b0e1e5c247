package org.loramerge.engine;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.CombinedUpdate;

/**
 * The task-arithmetic family on one tensor (docs/FORMATS.md §8): each adapter's dense delta
 * ΔW_a = s_a·U_a·V_aᵀ, trimmed to its top D by magnitude or dropped at random, combined element by
 * element ({@link Elementwise#combine}) and multiplied by λ. Everything is float64 in a fixed
 * order, so the delta Δ of every element has the same bits on every engine:
 *
 * <ul>
 *   <li>ΔW_a[i, j] = s_a · (Σ_k U_a[i, k]·Vᵀ_a[k, j]), the sum in k order, each product and sum
 *       rounded to float64 (no fused multiply-add); products with U[i, k] = 0 are skipped, which
 *       changes nothing for finite factors (the running sum starts at +0.0 and is never −0.0);</li>
 *   <li>a kept DARE value is ΔW_a / D (one division);</li>
 *   <li>Δ = λ · combine(...).</li>
 * </ul>
 *
 * The merged element is then W + Δ computed exactly and rounded once (an element whose Δ is zero
 * keeps W's bits). Magnitude selection needs the whole tensor: {@link #needsSelection} passes
 * over the rows first ({@link #countRows}, {@link TopSelection}).
 */
public final class DenseCombination {
    private final CombinedUpdate spec;
    private final CombineMethod.Rule rule;
    private final Combination.MajoritySign majority;
    private final double density;
    private final double lambda;
    private final List<LowRankTerm> terms;
    private final double[] weights;
    private final long[] keys;
    private final TopSelection[] selections;
    private final int cols;

    private static final ThreadLocal<double[][]> SCRATCH = ThreadLocal.withInitial(() -> new double[0][0]);

    private DenseCombination(CombinedUpdate spec, List<LowRankTerm> terms, long rows, int cols) {
        this.spec = spec;
        Combination how = spec.how();
        this.rule = how.method().rule();
        this.majority = how.majority();
        this.density = how.density();
        this.lambda = how.method().family() == CombineMethod.Family.TASK_ARITHMETIC ? how.lambda() : 1.0;
        this.terms = terms;
        this.cols = cols;
        int n = terms.size();
        this.weights = new double[n];
        this.keys = new long[n];
        this.selections = new TopSelection[n];
        for (int a = 0; a < n; a++) {
            CombinedUpdate.Part p = spec.parts().get(a);
            weights[a] = p.weight();
            keys[a] = DareMask.key(how.seed(), spec.name(), p.adapter());
            if (Elementwise.selectsByMagnitude(rule) && density < 1) {
                selections[a] = new TopSelection(rows * cols, rows, density);
            }
        }
    }

    /** Loads the factors of every part for a tensor viewed as [rows, cols]. */
    public static DenseCombination load(CombinedUpdate spec, long rows, long cols) throws IOException {
        List<LowRankTerm> terms = new ArrayList<>();
        for (CombinedUpdate.Part p : spec.parts()) {
            terms.add(LowRankTerm.load(p.term(), rows, cols));
        }
        return new DenseCombination(spec, terms, rows, Math.toIntExact(cols));
    }

    public CombinedUpdate spec() {
        return spec;
    }

    /** Each adapter's term, with its own scale s_a. */
    public List<LowRankTerm> terms() {
        return terms;
    }

    /** Columns of the tensor (the length of a row's Δ). */
    public int cols() {
        return cols;
    }

    public double[] weights() {
        return weights.clone();
    }

    /** DARE's key of part {@code a} (see {@link DareMask#key}). */
    public long dareKey(int a) {
        return keys[a];
    }

    public CombineMethod.Rule rule() {
        return rule;
    }

    public Combination.MajoritySign majority() {
        return majority;
    }

    public double density() {
        return density;
    }

    public double lambda() {
        return lambda;
    }

    /** The magnitude selection of part {@code a}, or null when it keeps everything it is not dropping at random. */
    public TopSelection selection(int a) {
        return selections[a];
    }

    /** True while a magnitude selection still needs a pass over the rows. */
    public boolean needsSelection() {
        for (TopSelection s : selections) {
            if (s != null && !s.done()) {
                return true;
            }
        }
        return false;
    }

    /**
     * One selection pass over rows {@code [row0, row0 + rowCount)}: for each part still selecting,
     * its histogram (or per-row tie counts), added to the selection at once. Blocks of one pass may
     * run on several threads; {@link #finishPass} ends the pass.
     */
    public void countRows(long row0, int rowCount) {
        double[] d = new double[cols];
        for (int a = 0; a < terms.size(); a++) {
            TopSelection s = selections[a];
            if (s == null || s.done()) {
                continue;
            }
            long[] counts = new long[s.countingTies() ? rowCount : 1 << s.bits()];
            for (int i = 0; i < rowCount; i++) {
                partDelta(a, row0 + i, d);
                if (s.countingTies()) {
                    long tie = s.tieKey();
                    long c = 0;
                    for (int j = 0; j < cols; j++) {
                        if (TopSelection.key(d[j]) == tie) {
                            c++;
                        }
                    }
                    counts[i] = c;
                } else {
                    for (int j = 0; j < cols; j++) {
                        long key = TopSelection.key(d[j]);
                        if (s.inPrefix(key)) {
                            counts[s.digit(key)]++;
                        }
                    }
                }
            }
            s.add(row0, counts);
        }
    }

    /** Ends a selection pass once every block of it has been counted. */
    public void finishPass() {
        for (TopSelection s : selections) {
            if (s != null && !s.done()) {
                s.finishPass();
            }
        }
    }

    /** Every selection pass over all {@code rows}, on this thread (for verify and tests). */
    public void selectAll(long rows) {
        while (needsSelection()) {
            for (long r = 0; r < rows; r += 256) {
                countRows(r, (int) Math.min(256, rows - r));
            }
            finishPass();
        }
    }

    /** ΔW_a of row {@code row} into {@code d[0..cols)}: s_a · Σ_k U[row, k]·Vᵀ[k, ·] in k order. */
    public void partDelta(int a, long row, double[] d) {
        LowRankTerm t = terms.get(a);
        int r = t.rank();
        int i = Math.toIntExact(row);
        double[] u = t.u();
        double[] vt = t.vt();
        Arrays.fill(d, 0, cols, 0.0);
        for (int k = 0; k < r; k++) {
            double uk = u[i * r + k];
            if (uk == 0) {
                continue;
            }
            int off = k * cols;
            for (int j = 0; j < cols; j++) {
                d[j] += uk * vt[off + j];
            }
        }
        double s = t.scale();
        for (int j = 0; j < cols; j++) {
            d[j] = s * d[j];
        }
    }

    /** Δ of row {@code row} into {@code out[0..cols)}; the selections must be done. */
    public void deltaRow(long row, double[] out) {
        int n = terms.size();
        double[][] s = SCRATCH.get();
        if (s.length < n || s[0].length < cols) {
            s = new double[n][Math.max(cols, s.length == 0 ? 0 : s[0].length)];
            SCRATCH.set(s);
        }
        for (int a = 0; a < n; a++) {
            double[] d = s[a];
            partDelta(a, row, d);
            TopSelection sel = selections[a];
            if (sel != null) {
                long rank = sel.hasPartialTies() ? sel.tieOffset(row) : 0;
                long tie = sel.tieKey();
                for (int j = 0; j < cols; j++) {
                    long key = TopSelection.key(d[j]);
                    boolean keep = sel.keeps(key, rank);
                    if (key == tie) {
                        rank++;
                    }
                    if (!keep) {
                        d[j] = 0.0;
                    }
                }
            } else if (Elementwise.dropsAtRandom(rule) && density < 1) {
                long first = row * cols;
                for (int j = 0; j < cols; j++) {
                    d[j] = DareMask.uniform(keys[a], first + j) < density ? d[j] / density : 0.0;
                }
            }
        }
        double[] tv = new double[n];
        for (int j = 0; j < cols; j++) {
            for (int a = 0; a < n; a++) {
                tv[a] = s[a][j];
            }
            out[j] = lambda * Elementwise.combine(rule, majority, tv, weights, n);
        }
    }

    /** Δ of one element (for the rare exact fallback): the row's, so ties are ranked as in {@link #deltaRow}. */
    public double deltaAt(long row, int col) {
        double[] out = new double[cols];
        deltaRow(row, out);
        return out[col];
    }
}
