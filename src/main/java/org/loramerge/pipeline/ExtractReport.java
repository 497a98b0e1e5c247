package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;

/** What {@code extract} found and wrote, for the summary and {@code --json}. */
public final class ExtractReport {
    /**
     * One weight that got low-rank factors. Errors are relative Frobenius norms, ‖·‖_F / ‖ΔW‖_F.
     *
     * @param rank            the rank written
     * @param energyKept      Σ_{i≤r} σ_i² / ‖ΔW‖²_F of the SVD found
     * @param relativeError   ‖ΔW − B·A‖ of the factors as written (rounded to their dtype), measured
     * @param truncationError ‖ΔW − U_r·Σ_r·V_rᵀ‖ of the SVD before the factors were rounded
     * @param optimalError    the Eckart–Young optimum sqrt(Σ_{i>r} σ_i²) with ΔW's exact singular
     *                        values ({@code --check-optimal}), else null
     * @param optimalRatio    truncationError / optimalError: how close the randomized SVD came to the
     *                        best rank-r approximation (1 is optimal); null when not checked or when
     *                        the optimum is 0
     */
    public record Module(String name, String layout, long[] shape, int rank, String dtype, double energyKept, double relativeError,
                         double truncationError, Double optimalError, Double optimalRatio) {
    }

    /**
     * A changed tensor that no low-rank pair expresses.
     *
     * @param action         "modules_to_save" (written whole), "bias" (a targeted layer's bias,
     *                       bias "lora_only") or "reported" (left out of the adapter)
     * @param relativeChange ‖T − B‖_F / ‖B‖_F, or null for a resized or non-float tensor
     */
    public record Change(String tensor, String action, long[] baseShape, long[] tunedShape, Double relativeChange, String reason) {
    }

    /**
     * Where the run's time went, in seconds. Forming, decomposing and comparing overlap (each on
     * threads of its own); which of them bounds the run shows in who waited for whom.
     *
     * @param formDelta        reading both checkpoints and forming each weight's ΔW, one weight after the other
     *                         (the engine spreads each weight over its own threads)
     * @param waitForDelta     a decomposing thread waiting for the next ΔW (per thread): when it is most of the run,
     *                         reading and forming bound it
     * @param decompose        the SVDs, the factors and their measured errors (per decomposing thread)
     * @param decomposeSvd     the part of {@code decompose} in the randomized SVDs themselves (per decomposing thread); the
     *                         rest rounds, encodes and measures the factors
     * @param compareOthers    comparing the tensors that are not targeted, on a thread of its own
     * @param write            placing the other changes and writing the adapter folder, at the end
     * @param waitForRoom      forming waiting for room: every decomposing thread busy and the weights formed ahead
     *                         waiting (on the GPU also for ΔW's device memory budget); when large, the SVDs bound the run
     * @param waitForCompare   the end waiting for the comparisons once every target was done
     * @param decomposeThreads weights decomposed at once
     * @param bound            the stage the others waited for longest: "formDelta", "decompose" or "compareOthers"
     */
    public record Timing(double formDelta, double waitForDelta, double decompose, double decomposeSvd, double compareOthers, double write,
                         double waitForRoom, double waitForCompare, int decomposeThreads, String bound) {
    }

    public String output;
    public double seconds;
    /** Where {@link #seconds} went. */
    public Timing timing;
    public int threads;
    /** Where the SVDs ran: "cpu" or "cuda:N" (a weight too large for the device is noted, and decomposed on the CPU). */
    public String svdDevice;
    /** rank, or the energy share with its max rank; and the SVD's settings. */
    public Integer rank;
    public Double energy;
    public Integer maxRank;
    public int oversampling;
    public int powerIterations;
    public long seed;
    public int modulesExtracted;
    /** Targeted weights whose ΔW is exactly zero: left out of the adapter. */
    public final List<String> unchangedModules = new ArrayList<>();
    /** Other tensors equal in both models. */
    public int tensorsUnchanged;
    /** sqrt(Σ ‖ΔW − B·A‖²) / sqrt(Σ ‖ΔW‖²) over every extracted module. */
    public double relativeError;
    /** Σ kept energy / Σ ‖ΔW‖² over every extracted module. */
    public double energyKept;
    public long adapterBytes;
    public final List<Module> modules = new ArrayList<>();
    public final List<Change> changes = new ArrayList<>();
    public final List<String> warnings = new ArrayList<>();
    public final List<String> notes = new ArrayList<>();
}
