package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.engine.Stages;
import org.loramerge.plan.OutputTensor;
import org.loramerge.quant.Requantizer;

/** What a merge did, for the summary and {@code --json}. */
public final class MergeReport {
    /** One output tensor's outcome. */
    /**
     * One output tensor's outcome.
     *
     * @param exactlyRounded elements too close to a rounding boundary for the fp64 error bound, decided in exact
     *                       expansion arithmetic
     * @param exactFallbacks elements that needed decimal arithmetic, the last resort (DoRA's norms, extreme ranges)
     */
    public record TensorOutcome(String name, String kind, String dtype, long[] shape, long exactlyRounded, long exactFallbacks, long overflows,
                                long nans, String note) {
    }

    /**
     * What survives of the adapter's change in one weight requantized to NF4 ({@code --to nf4}):
     * {@code survival = ‖D‖ / ‖ΔW‖} with {@code D = deq(Q(W+ΔW)) − deq(Q(W))}, W the dequantized
     * base weight, ΔW the exact merged value minus W, Q the requantization with the base's settings
     * and deq bitsandbytes' dequantization; and {@code aligned = ⟨D, ΔW⟩ / ‖ΔW‖²}, the part of ΔW
     * the change carries in ΔW's direction. All in double; see {@link Requantizer}.
     *
     * @param codes         4-bit codes in the weight (its element count)
     * @param codesChanged  codes of Q(W+ΔW) that differ from those of Q(W)
     * @param deltaNorm     ‖ΔW‖ (Frobenius)
     * @param survivingNorm ‖D‖
     * @param dot           ⟨D, ΔW⟩ (D before its final roundings, see Requantizer)
     */
    public record Survival(String name, long[] shape, int blocksize, boolean doubleQuant, long codes, long codesChanged,
                           double changedShare, double deltaNorm, double survivingNorm, double dot, Double survival, Double aligned) {
        /** The figures from the sums; survival and aligned are null when ΔW is zero. */
        public static Survival of(String name, long[] shape, int blocksize, boolean doubleQuant, long codes, long codesChanged,
                                  double deltaNorm, double survivingNorm, double dot) {
            return new Survival(name, shape, blocksize, doubleQuant, codes, codesChanged, codes == 0 ? 0 : (double) codesChanged / codes,
                    deltaNorm, survivingNorm, dot, deltaNorm > 0 ? survivingNorm / deltaNorm : null,
                    deltaNorm > 0 ? dot / (deltaNorm * deltaNorm) : null);
        }

        /** The smaller of survival and aligned (what the report sorts and warns by); +∞ when ΔW is zero. */
        double least() {
            return survival == null ? Double.POSITIVE_INFINITY : Math.min(survival, aligned);
        }
    }

    /**
     * The totals over every requantized weight, the norms and product of the whole model's change:
     * survival = sqrt(Σ ‖D‖²) / sqrt(Σ ‖ΔW‖²), aligned = Σ ⟨D, ΔW⟩ / Σ ‖ΔW‖², and the share of
     * codes changed among all requantized codes.
     */
    public static final class Requantization {
        /** Below this share (survival or aligned) the merge warns that the fine-tune is mostly rounded away. */
        public static final double WARN_BELOW = 0.5;

        public long codes;
        public long codesChanged;
        public double deltaNorm;
        public double survivingNorm;
        public Double survival;
        public Double aligned;
        public double changedShare;
        public final List<Survival> tensors = new ArrayList<>();

        static Requantization of(List<Survival> survivals) {
            Requantization r = new Requantization();
            double delta = 0;
            double surviving = 0;
            double dot = 0;
            for (Survival s : survivals) {
                r.tensors.add(s);
                r.codes += s.codes();
                r.codesChanged += s.codesChanged();
                delta += s.deltaNorm() * s.deltaNorm();
                surviving += s.survivingNorm() * s.survivingNorm();
                dot += s.dot();
            }
            r.deltaNorm = Math.sqrt(delta);
            r.survivingNorm = Math.sqrt(surviving);
            r.survival = delta > 0 ? r.survivingNorm / r.deltaNorm : null;
            r.aligned = delta > 0 ? dot / delta : null;
            r.changedShare = r.codes == 0 ? 0 : (double) r.codesChanged / r.codes;
            return r;
        }

        /** True when less than {@link #WARN_BELOW} of the change survives, by size or by direction. */
        public boolean mostlyRoundedAway() {
            return survival != null && (survival < WARN_BELOW || aligned < WARN_BELOW);
        }

        /** The tensors, least surviving first (by the smaller of survival and aligned; a zero ΔW last). */
        public List<Survival> worstFirst() {
            List<Survival> out = new ArrayList<>(tensors);
            out.sort(Comparator.comparingDouble(Survival::least));
            return out;
        }
    }

    public String engine;
    public String output;
    public long tensorsMerged;
    public long tensorsReplaced;
    public long tensorsCopied;
    public long tensorsConverted;
    /** bitsandbytes NF4 weights written dense without adapter terms ({@code --to bf16/f16/f32}). */
    public long tensorsDequantized;
    public long bytesWritten;
    public int shards;
    public long adapterKeys;
    public double seconds;
    /** From the command's start to the first tensor: reading headers, planning, starting the engine (alongside). */
    public double startSeconds;
    /** {@code --to nf4}: what survives requantization; null otherwise. */
    public Requantization requantization;
    public final List<TensorOutcome> tensors = new ArrayList<>();
    public final List<String> warnings = new ArrayList<>();
    public final List<String> notes = new ArrayList<>();
    public final List<String> copiedFiles = new ArrayList<>();
    /** With {@code merge --verify}: per adapted tensor, the worst error of the sampled rows in ulp (0 when exact). */
    public final Map<String, Double> verifiedWorstUlp = new LinkedHashMap<>();

    /** Where the time went, stage by stage (the merge's own accounting once it ran). Not a public field: not part of a serialized report. */
    private Stages stages = new Stages();

    /** Where the time went, stage by stage; the caller adds the stages before the first tensor (planning, the engine's start). */
    public Stages stages() {
        return stages;
    }

    void stages(Stages s) {
        this.stages = s;
    }

    /** Counts one output tensor of this kind. */
    void count(OutputTensor.Kind kind) {
        switch (kind) {
            case MERGE: tensorsMerged++; break;
            case REPLACE: tensorsReplaced++; break;
            case CONVERT: tensorsConverted++; break;
            case DEQUANTIZE: tensorsDequantized++; break;
            default: tensorsCopied++;
        }
    }
}
