package org.loramerge.engine;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.CombinedUpdate;
import org.loramerge.plan.DoraSpec;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.plan.TermSpec;

/**
 * An output tensor made ready for computing: its adapter factors loaded, its DoRA magnitudes and
 * replacement rows read. Jobs are immutable once {@link #prepare prepared}, except for the column
 * norms of a column-axis DoRA tensor, which a first pass over the rows fills in.
 */
public final class TensorJob {
    /** Unit roundoff of double. */
    public static final double U = 0x1p-53;

    private final OutputTensor out;
    private final FloatFormat src;
    private final FloatFormat dst;
    private final int cols;
    private final List<LowRankTerm> terms;
    private final double boundK;
    private final DoraSpec.Axis doraAxis;
    private final double[] magnitude;
    private final Map<Long, Integer> tokenRowOf;
    private final double[] tokenValues;
    private double[] colFactor;
    private double[] colRel;
    private final Map<Integer, BigDecimal> exactFactors = new ConcurrentHashMap<>();
    private final DenseCombination dense;

    private TensorJob(OutputTensor out, List<LowRankTerm> terms, double[] magnitude, Map<Long, Integer> tokenRowOf,
                      double[] tokenValues, DenseCombination dense) {
        this.out = out;
        this.src = out.source().dtype().isMergeable() ? FloatFormat.of(out.source().dtype()) : null;
        this.dst = out.dtype().isMergeable() ? FloatFormat.of(out.dtype()) : null;
        this.cols = Math.toIntExact(out.cols());
        this.terms = Collections.unmodifiableList(terms);
        // error of an fp64 merge: at most 2 roundings per rank step (multiply, add; or one FMA),
        // the scale product and the final add, bounded by (2r + 2)·u·(Σ|s U V| + |v|); 4(r + 4)·u leaves margin
        this.boundK = 4.0 * (rankPerRow(terms) + 4) * U;
        this.doraAxis = out.dora() == null ? null : out.dora().axis();
        this.magnitude = magnitude;
        this.tokenRowOf = tokenRowOf;
        this.tokenValues = tokenValues;
        this.dense = dense;
        if (dense != null && (!terms.isEmpty() || doraAxis != null || tokenRowOf != null)) {
            throw new IllegalArgumentException(out.name() + ": a dense combination is the tensor's only update");
        }
    }

    /**
     * The largest sum of ranks over the terms that cover one row: every term's rank when all cover
     * every row; for an MoE expert stack, whose terms each cover one expert's rows, one expert's.
     */
    private static int rankPerRow(List<LowRankTerm> terms) {
        int most = 0;
        for (LowRankTerm start : terms) {
            int sum = 0;
            for (LowRankTerm t : terms) {
                if (t.localRow(start.row0()) >= 0) {
                    sum += t.rank();
                }
            }
            most = Math.max(most, sum);
        }
        return most;
    }

    /**
     * Loads what {@code out} needs, every step on the host, on both engines: a PEFT {@code _svd}
     * combination's SVD too, so that a merged model is the same bytes on the GPU and the CPU. A job
     * holds about {@link #heapBytes} until its tensor is written; the pipeline bounds the sum over the
     * tensors it has open at once, so memory follows the adapter's largest tensors, not the model.
     */
    public static TensorJob prepare(OutputTensor out) throws IOException {
        List<LowRankTerm> terms = new ArrayList<>();
        for (TermSpec t : out.terms()) {
            terms.add(LowRankTerm.load(t, out.rows(), out.cols()));
        }
        DenseCombination dense = null;
        CombinedUpdate combined = out.combined();
        if (combined != null) {
            switch (combined.how().method().operand()) {
                case FACTORS:
                case SVD: {
                    // one low-rank term with scale 1, its factors combined in float64 (FactorCombination)
                    FactorCombination.Factors f = FactorCombination.combine(combined, CombinationDeltas.HOST);
                    double[][] uv = TermSpec.uv(combined.layout(), f.rank(), f.a(), f.b(), out.rows(), out.cols());
                    terms.add(new LowRankTerm(combined.module(), 1.0, f.rank(), Math.toIntExact(out.rows()), Math.toIntExact(out.cols()),
                            uv[0], uv[1]));
                    break;
                }
                case DELTAS:
                    dense = DenseCombination.load(combined, out.rows(), out.cols());
                    break;
            }
        }
        double[] magnitude = out.dora() == null ? null : out.dora().magnitude().readDoubles();
        Map<Long, Integer> rowOf = null;
        double[] values = null;
        if (out.tokenRows() != null) {
            rowOf = new HashMap<>();
            long[] idx = out.tokenRows().indices();
            for (int k = 0; k < idx.length; k++) {
                rowOf.put(idx[k], k); // a repeated index takes the last row, as index_copy_ does
            }
            values = out.tokenRows().values().readDoubles();
        }
        return new TensorJob(out, terms, magnitude, rowOf, values, dense);
    }

    /**
     * The heap a job of {@code out} holds from {@link #prepare} until its tensor is written, known from
     * the plan before anything is loaded (so that the pipeline can wait for room first): each term's U,
     * Vᵀ and row norms in doubles ({@link LowRankTerm#heapBytes}); a combination's parts, or its one
     * combined term (the parts' ranks summed, or the SVD's rank); DoRA's magnitudes with a column
     * axis's factors and bounds; replaced rows; and for a requantized weight what its requantizer keeps
     * until the weight is done: at most the output's codes and the base's (for the survival measure),
     * each no larger than the output group, and a few sums and scales per quantization block. The loading's own
     * temporaries (the factors as stored, an SVD's dense ΔW) are not counted: they are gone by the time
     * the next tensor is prepared.
     */
    public static long heapBytes(OutputTensor out) {
        long rows = out.rows();
        long cols = out.cols();
        long bytes = 0;
        for (TermSpec t : out.terms()) {
            bytes += LowRankTerm.heapBytes(t, rows, cols);
        }
        CombinedUpdate combined = out.combined();
        if (combined != null) {
            long ranks = 0;
            for (CombinedUpdate.Part p : combined.parts()) {
                ranks += p.term().factorRank();
            }
            switch (combined.how().method().operand()) {
                case FACTORS:
                    bytes += LowRankTerm.heapBytes(ranks, rows, cols);
                    break;
                case SVD:
                    bytes += LowRankTerm.heapBytes(combined.how().rank() > 0 ? combined.how().rank() : ranks, rows, cols);
                    break;
                case DELTAS:
                    for (CombinedUpdate.Part p : combined.parts()) {
                        bytes += LowRankTerm.heapBytes(p.term(), rows, cols);
                    }
                    break;
            }
        }
        if (out.dora() != null) {
            bytes += 3L * Double.BYTES * out.dora().magnitude().info().numElements();
        }
        if (out.tokenRows() != null) {
            // the values in doubles, and a map entry (about 64 bytes with its boxed key and value) a row
            bytes += Double.BYTES * out.tokenRows().values().info().numElements() + 64L * out.tokenRows().indices().length;
        }
        if (out.isRequantized()) {
            long blocks = (out.numElements() + out.quantizedOutput().blockElements() - 1) / out.quantizedOutput().blockElements();
            bytes += 2 * out.sizeInBytes() + 40 * blocks;
        }
        return bytes;
    }

    public OutputTensor out() {
        return out;
    }

    public FloatFormat srcFormat() {
        return src;
    }

    public FloatFormat dstFormat() {
        return dst;
    }

    public long rows() {
        return out.rows();
    }

    public int cols() {
        return cols;
    }

    public List<LowRankTerm> terms() {
        return terms;
    }

    /** The task-arithmetic combination that is this tensor's update (docs/FORMATS.md §8), or null. */
    public DenseCombination dense() {
        return dense;
    }

    /** True while a magnitude selection must pass over the rows before any row can be merged. */
    public boolean needsSelection() {
        return dense != null && dense.needsSelection();
    }

    /** The error bound constant K of e = K·(|v| + 2·Σ|s|·‖U_i‖·‖V_j‖). */
    public double boundK() {
        return boundK;
    }

    public DoraSpec.Axis doraAxis() {
        return doraAxis;
    }

    public double[] magnitude() {
        return magnitude;
    }

    /** The replacement row for output row {@code row}, as an offset into {@link #tokenValues()}, or -1. */
    public int tokenRowOffset(long row) {
        if (tokenRowOf == null) {
            return -1;
        }
        Integer k = tokenRowOf.get(row);
        return k == null ? -1 : k * cols;
    }

    public double[] tokenValues() {
        return tokenValues;
    }

    /** True when a first pass must compute per-column norms before any row can be finished. */
    public boolean needsColumnPass() {
        return doraAxis == DoraSpec.Axis.COLUMN;
    }

    /**
     * Turns the first pass's per-column sums over all rows ({@link TensorMerge#columnSums}) into the
     * column factors m_j / ‖V_·j‖ and their relative error bounds; a column whose norm is not
     * known well enough gets an infinite bound, so each of its elements is recomputed exactly.
     */
    public void finishColumnNorms(double[] sumSq, double[] sumErr) {
        double[] factor = new double[cols];
        double[] rel = new double[cols];
        double n = rows();
        for (int j = 0; j < cols; j++) {
            double relS = (sumErr[j] + (n + 2) * U * sumSq[j]) / sumSq[j];
            factor[j] = magnitude[j] / Math.sqrt(sumSq[j]);
            rel[j] = relS < 1e-3 && Double.isFinite(factor[j]) ? relS / 2 + 3 * U : Double.POSITIVE_INFINITY;
        }
        this.colFactor = factor;
        this.colRel = rel;
    }

    public double[] columnFactor() {
        return colFactor;
    }

    public double[] columnRel() {
        return colRel;
    }

    /** Cache of exact DoRA factors (row or column index to m / ‖V‖), shared by all threads. */
    public Map<Integer, BigDecimal> exactFactors() {
        return exactFactors;
    }

    /** Reads source row {@code row} as doubles (for the exact fallback of column-axis DoRA). */
    public double[] readSourceRow(long row) throws IOException {
        long rowBytes = (long) cols * out.source().dtype().bits() / 8;
        try (TensorSource.Bytes r = out.source().read(row * rowBytes, rowBytes)) {
            ByteBuffer b = r.bytes();
            double[] v = new double[cols];
            for (int j = 0; j < cols; j++) {
                v[j] = src.decode(src.bitsAt(b, j));
            }
            return v;
        }
    }
}
