package org.loramerge.api;

import java.util.ArrayList;
import java.util.Collections;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.loramerge.engine.Stages;
import org.loramerge.pipeline.MergeReport;

/**
 * What {@link LoraMerge#merge} did. Immutable; the {@code merge --json} summary is this record with
 * snake_case keys.
 *
 * @param output           the merged model's folder
 * @param engine           the engine that ran, as it describes itself
 * @param tensorsMerged    base tensors with LoRA terms, DoRA or token rows applied
 * @param tensorsReplaced  tensors the adapter replaces (modules_to_save, bias="all", ...)
 * @param tensorsConverted tensors only converted to another dtype
 * @param tensorsDequantized 4-bit weights written dense without adapter terms
 * @param tensorsCopied    tensors copied byte for byte
 * @param bytesWritten     tensor bytes written
 * @param shards           safetensors files written
 * @param adapterKeys      adapter keys applied (every key of the adapter)
 * @param seconds          time of the merge itself
 * @param startSeconds     time from the call to the first tensor: reading headers, planning, starting the engine
 * @param tensors          every output tensor that is not a plain copy
 * @param warnings         things to know that did not stop the merge
 * @param notes            decisions worth knowing (untied lm_head, tokenizer files taken from the adapter, ...)
 * @param copiedFiles      non-weight files copied into the output
 * @param verifiedRows     rows per adapted tensor that the verification recomputed (0: not verified;
 *                         {@link VerifyOptions#ALL_ROWS}: every row)
 * @param verifiedWorstUlp with verification: per adapted tensor, the worst error of its sampled rows in ulp
 * @param requantization   with {@code --to nf4}: what survives of the adapter's change; else null
 * @param stages           where the time went, by stage name in the order a block meets them
 *                         ({@link Stages.Stage}): wall seconds of the steps taken one after the other,
 *                         thread seconds summed over the workers, device seconds summed over the GPU's streams
 */
public record MergeResult(String output, String engine, long tensorsMerged, long tensorsReplaced, long tensorsConverted,
                          long tensorsDequantized, long tensorsCopied, long bytesWritten, int shards, long adapterKeys, double seconds,
                          double startSeconds, List<TensorResult> tensors, List<String> warnings, List<String> notes,
                          List<String> copiedFiles, int verifiedRows, Map<String, Double> verifiedWorstUlp, Requantization requantization,
                          Map<String, Stages.Total> stages) {

    /**
     * One output tensor that is not a plain copy.
     *
     * @param exactlyRounded elements at a rounding boundary that the fp64 bound could not decide, settled
     *                       exactly by expansion arithmetic
     * @param exactFallbacks of the same kind, those settled in decimal arithmetic (DoRA, extreme ranges)
     */
    public record TensorResult(String name, String kind, String dtype, List<Long> shape, long exactlyRounded, long exactFallbacks, long overflows,
                               long nans, String note) {
    }

    /** What survives of the adapter's change in one requantized weight; see docs/QLORA.md for the definitions. */
    public record Survival(String name, List<Long> shape, int blocksize, boolean doubleQuant, long codes, long codesChanged,
                           double changedShare, double deltaNorm, double survivingNorm, double dot, Double survival, Double aligned) {
        double least() {
            return survival == null ? Double.POSITIVE_INFINITY : Math.min(survival, aligned);
        }
    }

    /** The totals over every requantized weight, and each weight's figures. */
    public record Requantization(long codes, long codesChanged, double deltaNorm, double survivingNorm, Double survival, Double aligned,
                                 double changedShare, boolean mostlyRoundedAway, List<Survival> tensors) {
        /** Below this share (survival or aligned) the merge warns that the fine-tune is mostly rounded away. */
        public static final double WARN_BELOW = MergeReport.Requantization.WARN_BELOW;

        /** The weights, least surviving first (by the smaller of survival and aligned; a zero change last). */
        public List<Survival> worstFirst() {
            List<Survival> out = new ArrayList<>(tensors);
            out.sort(Comparator.comparingDouble(Survival::least));
            return out;
        }
    }

    static MergeResult of(MergeReport r, int verifiedRows) {
        List<TensorResult> tensors = new ArrayList<>();
        for (MergeReport.TensorOutcome t : r.tensors) {
            tensors.add(new TensorResult(t.name(), t.kind(), t.dtype(), shape(t.shape()), t.exactlyRounded(), t.exactFallbacks(), t.overflows(),
                    t.nans(), t.note()));
        }
        Requantization q = null;
        if (r.requantization != null) {
            MergeReport.Requantization x = r.requantization;
            List<Survival> survivals = new ArrayList<>();
            for (MergeReport.Survival s : x.tensors) {
                survivals.add(new Survival(s.name(), shape(s.shape()), s.blocksize(), s.doubleQuant(), s.codes(), s.codesChanged(),
                        s.changedShare(), s.deltaNorm(), s.survivingNorm(), s.dot(), s.survival(), s.aligned()));
            }
            q = new Requantization(x.codes, x.codesChanged, x.deltaNorm, x.survivingNorm, x.survival, x.aligned, x.changedShare,
                    x.mostlyRoundedAway(), List.copyOf(survivals));
        }
        return new MergeResult(r.output, r.engine, r.tensorsMerged, r.tensorsReplaced, r.tensorsConverted, r.tensorsDequantized,
                r.tensorsCopied, r.bytesWritten, r.shards, r.adapterKeys, r.seconds, r.startSeconds, List.copyOf(tensors),
                List.copyOf(r.warnings), List.copyOf(r.notes), List.copyOf(r.copiedFiles), verifiedRows,
                Collections.unmodifiableMap(new LinkedHashMap<>(r.verifiedWorstUlp)), q, Collections.unmodifiableMap(r.stages().totals()));
    }

    static List<Long> shape(long[] shape) {
        List<Long> out = new ArrayList<>();
        for (long d : shape) {
            out.add(d);
        }
        return List.copyOf(out);
    }
}
