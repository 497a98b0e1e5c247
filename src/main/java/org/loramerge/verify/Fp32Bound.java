package org.loramerge.verify;

import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.DoraSpec;

/**
 * The fp32-accumulation tolerance of one tensor ({@link Tolerance.Mode#FP32_ACCUMULATION}): for
 * each element, how far from the exact merge x a merge computed in fp32 arithmetic may land, and
 * still be correct. docs/FORMATS.md §10 derives it; in short, with u = 2^-24, r the number of
 * products summed for the element (the ranks of its terms), S = Σ|s·U_ik·V_kj| and W the base value:
 *
 * <pre>
 *   E   = c·(|W| + S) + η           c = (r + 4)·u  [+ 2^-p when the output has p &lt; 24 significand bits]
 *                                    η = the output's smallest subnormal step (16-bit outputs), else 0
 *   tol = ulp(|x| + E) + E          (the final rounding to the output dtype, with a factor 2 of margin)
 * </pre>
 *
 * The (r + 4)·u covers the fp32 dot product (γ_r), the scale, the fp32 add of W and the inputs'
 * conversion to fp32; the 2^-p term a ΔW rounded to a 16-bit model dtype before it is added (PEFT
 * does so for embeddings). DoRA rescales by f = m/‖W + ΔW‖ computed in fp32 over n elements:
 * E_dora = |f|·E + |x|·(ρ + 3u), ρ = (c·(N + 2T) + √n·η)/N + (n/2 + 2)·u, N the norm and T
 * Σ|s|·Σ_k‖U_k‖·|V_k| along the norm's axis (a bound of ‖S‖, so the norm's error needs no second pass).
 */
final class Fp32Bound {
    static final double U32 = 0x1p-24;
    /** Margin for the fp64 reference value itself (its error is below 2^-48 relative by far). */
    private static final double REFERENCE = 0x1p-48;

    private final TensorJob job;
    private final FloatFormat out;
    private final double c;
    private final double eta;
    /** Per term: the norms along the DoRA axis (row axis: ‖Vᵀ_k·‖ per k; column axis: ‖U_·k‖ per k). */
    private final double[][] axisNorms;
    private final double[] columnNorm;

    /**
     * @param columnSumSq for a column-axis DoRA tensor, Σ over rows of the fp64 merged value squared, per column
     *                    (the verifier's first pass); null otherwise
     */
    Fp32Bound(TensorJob job, FloatFormat out, double[] columnSumSq) {
        this.job = job;
        this.out = out;
        int rankSum = 0;
        for (LowRankTerm t : job.terms()) {
            rankSum += t.rank();
        }
        boolean narrow = out.precision() < 24;
        this.c = (rankSum + 4) * U32 + (narrow ? Math.scalb(1.0, -out.precision()) : 0) + REFERENCE;
        this.eta = narrow ? out.ulp(0) : 0;
        this.axisNorms = new double[job.terms().size()][];
        DoraSpec.Axis axis = job.doraAxis();
        for (int q = 0; q < job.terms().size() && axis != null; q++) {
            LowRankTerm t = job.terms().get(q);
            double[] n = new double[t.rank()];
            for (int k = 0; k < t.rank(); k++) {
                double s = 0;
                if (axis == DoraSpec.Axis.ROW) {
                    for (int j = 0; j < t.cols(); j++) {
                        double v = t.vt()[k * t.cols() + j];
                        s += v * v;
                    }
                } else {
                    for (int i = 0; i < t.rows(); i++) {
                        double v = t.u()[i * t.rank() + k];
                        s += v * v;
                    }
                }
                n[k] = Math.sqrt(s);
            }
            axisNorms[q] = n;
        }
        if (columnSumSq != null) {
            columnNorm = new double[columnSumSq.length];
            for (int j = 0; j < columnSumSq.length; j++) {
                columnNorm[j] = Math.sqrt(columnSumSq[j]);
            }
        } else {
            columnNorm = null;
        }
    }

    /**
     * The tolerance of every element of {@code row}: {@code w} the base row, {@code x} the exact
     * merged row (fp64), written to {@code tol}.
     */
    void row(long row, double[] w, double[] x, double[] tol) {
        int cols = job.cols();
        int i = Math.toIntExact(row);
        double[] s = new double[cols];
        double[] v = new double[cols];
        System.arraycopy(w, 0, v, 0, cols);
        double[] tAxis = job.doraAxis() == null ? null : new double[job.doraAxis() == DoraSpec.Axis.ROW ? 1 : cols];
        for (int q = 0; q < job.terms().size(); q++) {
            LowRankTerm t = job.terms().get(q);
            int r = t.rank();
            double scale = Math.abs(t.scale());
            for (int k = 0; k < r; k++) {
                double uk = t.u()[i * r + k];
                if (uk == 0) {
                    continue;
                }
                int off = k * cols;
                for (int j = 0; j < cols; j++) {
                    double p = uk * t.vt()[off + j];
                    s[j] += scale * Math.abs(p);
                    v[j] += t.scale() * p;
                }
                if (job.doraAxis() == DoraSpec.Axis.ROW) {
                    tAxis[0] += scale * Math.abs(uk) * axisNorms[q][k];
                }
            }
            if (job.doraAxis() == DoraSpec.Axis.COLUMN) {
                for (int k = 0; k < r; k++) {
                    for (int j = 0; j < cols; j++) {
                        tAxis[j] += scale * axisNorms[q][k] * Math.abs(t.vt()[k * cols + j]);
                    }
                }
            }
        }
        double rowNorm = 0;
        if (job.doraAxis() == DoraSpec.Axis.ROW) {
            double sq = 0;
            for (int j = 0; j < cols; j++) {
                sq += v[j] * v[j];
            }
            rowNorm = Math.sqrt(sq);
        }
        for (int j = 0; j < cols; j++) {
            double e = c * (Math.abs(w[j]) + s[j]) + eta;
            if (job.doraAxis() != null) {
                boolean byRow = job.doraAxis() == DoraSpec.Axis.ROW;
                double norm = byRow ? rowNorm : columnNorm[j];
                double t = byRow ? tAxis[0] : tAxis[j];
                double n = byRow ? cols : job.rows();
                double m = job.magnitude()[byRow ? i : j];
                if (norm > 0) {
                    double f = m / norm;
                    double rho = (c * (norm + 2 * t) + Math.sqrt(n) * eta) / norm + (n / 2 + 2) * U32;
                    e = Math.abs(f) * e + Math.abs(x[j]) * (rho + 3 * U32);
                }
            }
            tol[j] = out.ulp(Math.abs(x[j]) + e) + e;
        }
    }
}
