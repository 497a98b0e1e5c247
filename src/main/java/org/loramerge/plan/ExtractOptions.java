package org.loramerge.plan;

import java.util.List;
import org.loramerge.format.DType;

/**
 * What {@code extract} is asked for.
 *
 * @param targets    {@code null} for all-linear (every 2-D weight but embeddings and the output head,
 *                   as PEFT expands "all-linear"), else module names matched as PEFT matches a
 *                   target_modules list (the name, or a suffix after a dot)
 * @param embeddings give the input embedding and the output head low-rank factors too
 * @param rank       the rank of every module; ignored when {@code energy} is set
 * @param energy     when not null: per module the smallest rank that keeps this share of ‖ΔW‖²_F
 * @param maxRank    the largest rank {@code energy} may choose
 * @param others     what happens to changed tensors that LoRA cannot express
 * @param dtype      dtype of the factors, or null for each base weight's own
 * @param baseName   base_model_name_or_path written into adapter_config.json
 */
public record ExtractOptions(List<String> targets, boolean embeddings, int rank, Double energy, int maxRank, Others others, DType dtype,
                             String baseName) {
    /** What happens to changed tensors that a low-rank term cannot express (norms, biases, a resized vocabulary, untargeted weights). */
    public enum Others {
        /** Written whole, PEFT's way: modules_to_save, or the bias of a targeted layer with bias "lora_only". */
        SAVE,
        /** Left out of the adapter and listed in the report. */
        REPORT
    }

    public ExtractOptions {
        if (rank < 1 || maxRank < 1) {
            throw new IllegalArgumentException("rank " + rank + ", max rank " + maxRank);
        }
        if (energy != null && !(energy > 0 && energy <= 1)) {
            throw new IllegalArgumentException("energy share " + energy);
        }
        if (dtype != null && !dtype.isMergeable()) {
            throw new IllegalArgumentException("factor dtype " + dtype);
        }
        targets = targets == null ? null : List.copyOf(targets);
    }

    public boolean allLinear() {
        return targets == null;
    }

    /** The rank a module's SVD is computed to: the rank, or the energy rule's limit. */
    public int sketchRank() {
        return energy == null ? rank : maxRank;
    }
}
