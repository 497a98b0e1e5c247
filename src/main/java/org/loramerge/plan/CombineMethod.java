package org.loramerge.plan;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * How the updates of several adapters are combined (docs/FORMATS.md §8). Two families share some
 * names, so each constant says where it applies: PEFT 0.21's {@code add_weighted_adapter}
 * (peft tuners/lora/model.py, utils/merge_utils.py), which {@code combine} writes as a new
 * adapter and {@code merge} merges, and the task-arithmetic family on the dense deltas
 * ΔW_i = s_i·B_i·A_i, which only {@code merge} has.
 */
public enum CombineMethod {
    /** The factors side by side (rank Σ r_i): ΔW = Σ w_i·s_i·B_i·A_i, exact. Both commands. */
    CAT("cat", Family.PEFT, Operand.FACTORS),
    /** ΔW = λ·Σ w_i·s_i·B_i·A_i on the dense deltas, exact. {@code merge} only. */
    TASK_ARITHMETIC("task_arithmetic", Family.TASK_ARITHMETIC, Operand.DELTAS),
    /** PEFT's linear: A and B summed separately with sqrt(|w_i·s_i|) weights, the sign on A; equal ranks. */
    LINEAR("linear", Family.PEFT, Operand.FACTORS),
    /** PEFT's ties on the A and on the B factors separately ({@code combine}). */
    FACTOR_TIES("ties", Family.PEFT, Operand.FACTORS),
    /** PEFT's dare_linear on the factors ({@code combine}). */
    FACTOR_DARE_LINEAR("dare_linear", Family.PEFT, Operand.FACTORS),
    /** PEFT's dare_ties on the factors ({@code combine}). */
    FACTOR_DARE_TIES("dare_ties", Family.PEFT, Operand.FACTORS),
    /** PEFT's magnitude_prune on the factors ({@code combine}). */
    FACTOR_MAGNITUDE_PRUNE("magnitude_prune", Family.PEFT, Operand.FACTORS),
    /** TIES on the dense deltas, times λ ({@code merge}). */
    TIES("ties", Family.TASK_ARITHMETIC, Operand.DELTAS),
    /** DARE then the weighted sum on the dense deltas, times λ ({@code merge}). */
    DARE_LINEAR("dare_linear", Family.TASK_ARITHMETIC, Operand.DELTAS),
    /** DARE then TIES' sign election and disjoint mean on the dense deltas, times λ ({@code merge}). */
    DARE_TIES("dare_ties", Family.TASK_ARITHMETIC, Operand.DELTAS),
    /** Magnitude pruning then the weighted sum on the dense deltas, times λ ({@code merge}). */
    MAGNITUDE_PRUNE("magnitude_prune", Family.TASK_ARITHMETIC, Operand.DELTAS),
    /** PEFT's svd: the weighted sum of the dense deltas, truncated to rank R by an SVD. */
    SVD("svd", Family.PEFT, Operand.SVD),
    /** PEFT's ties_svd: ties on the dense deltas, then the SVD. */
    TIES_SVD("ties_svd", Family.PEFT, Operand.SVD),
    /** PEFT's dare_linear_svd. */
    DARE_LINEAR_SVD("dare_linear_svd", Family.PEFT, Operand.SVD),
    /** PEFT's dare_ties_svd. */
    DARE_TIES_SVD("dare_ties_svd", Family.PEFT, Operand.SVD),
    /** PEFT's magnitude_prune_svd. */
    MAGNITUDE_PRUNE_SVD("magnitude_prune_svd", Family.PEFT, Operand.SVD);

    /** Where a method comes from. */
    public enum Family {
        /** PEFT 0.21's add_weighted_adapter, quirks included. */
        PEFT,
        /** Task arithmetic on the dense deltas (TIES, DARE), merged straight into the model. */
        TASK_ARITHMETIC
    }

    /** What the method works on, which decides how the engine computes it. */
    public enum Operand {
        /** The factors A and B (the result is one low-rank term). */
        FACTORS,
        /** The dense deltas, element by element (the result is a dense ΔW). */
        DELTAS,
        /** The dense deltas, then a truncated SVD (the result is one low-rank term). */
        SVD
    }

    /** The elementwise rule applied to the deltas (or factors) before or instead of the sum. */
    public enum Rule {
        /** The weighted sum. */
        SUM,
        /** Keep the top D by magnitude, then the weighted sum. */
        MAGNITUDE,
        /** Keep the top D by magnitude, elect a sign, disjoint mean. */
        TIES,
        /** Random drop (keep with probability D, rescale by 1/D), then the weighted sum. */
        DARE,
        /** Random drop and rescale, then sign election and disjoint mean. */
        DARE_TIES
    }

    private final String cliName;
    private final Family family;
    private final Operand operand;

    CombineMethod(String cliName, Family family, Operand operand) {
        this.cliName = cliName;
        this.family = family;
        this.operand = operand;
    }

    /** As the command line and PEFT spell it. */
    public String cliName() {
        return cliName;
    }

    public Family family() {
        return family;
    }

    public Operand operand() {
        return operand;
    }

    /** The elementwise rule: what is kept of each input, and how the kept values combine. */
    public Rule rule() {
        switch (this) {
            case FACTOR_TIES:
            case TIES:
            case TIES_SVD:
                return Rule.TIES;
            case FACTOR_DARE_LINEAR:
            case DARE_LINEAR:
            case DARE_LINEAR_SVD:
                return Rule.DARE;
            case FACTOR_DARE_TIES:
            case DARE_TIES:
            case DARE_TIES_SVD:
                return Rule.DARE_TIES;
            case FACTOR_MAGNITUDE_PRUNE:
            case MAGNITUDE_PRUNE:
            case MAGNITUDE_PRUNE_SVD:
                return Rule.MAGNITUDE;
            default:
                return Rule.SUM;
        }
    }

    /** True for the methods whose merge is W + Σ (scale)·U·Vᵀ exactly, rounded once. */
    public boolean isExact() {
        return this == CAT || this == TASK_ARITHMETIC;
    }

    /** True when --density applies. */
    public boolean usesDensity() {
        return rule() != Rule.SUM;
    }

    /** True when --majority-sign applies. */
    public boolean usesMajoritySign() {
        return rule() == Rule.TIES || rule() == Rule.DARE_TIES;
    }

    /** True when --seed applies (random drops). */
    public boolean isRandom() {
        return rule() == Rule.DARE || rule() == Rule.DARE_TIES;
    }

    /** True when every adapter of a module must have the same rank (PEFT's check for the factor-wise methods). */
    public boolean needsEqualRanks() {
        return operand == Operand.FACTORS && this != CAT;
    }

    /** True when the combined update is one low-rank term (so {@code combine} can write it as an adapter). */
    public boolean isLowRank() {
        return operand != Operand.DELTAS;
    }

    /**
     * The methods {@code merge --combine} takes: cat, PEFT's linear and SVD methods, and the
     * task-arithmetic family (so the names PEFT shares with it mean the dense methods here).
     */
    public static List<CombineMethod> forMerge() {
        List<CombineMethod> out = new ArrayList<>();
        for (CombineMethod m : values()) {
            if (m.operand != Operand.FACTORS || m == CAT || m == LINEAR) {
                out.add(m);
            }
        }
        return out;
    }

    /** The methods {@code combine --combine} takes: PEFT's add_weighted_adapter, each by its PEFT name. */
    public static List<CombineMethod> forCombine() {
        List<CombineMethod> out = new ArrayList<>();
        for (CombineMethod m : values()) {
            if (m.family == Family.PEFT) {
                out.add(m);
            }
        }
        return out;
    }


    /** The method of {@code name} among {@code choices}, or null. */
    public static CombineMethod parse(String name, List<CombineMethod> choices) {
        String n = name.toLowerCase(Locale.ROOT).replace('-', '_');
        for (CombineMethod m : choices) {
            if (m.cliName.equals(n)) {
                return m;
            }
        }
        return null;
    }

    /** The names of {@code choices}, comma-separated, for messages. */
    public static String names(List<CombineMethod> choices) {
        List<String> n = new ArrayList<>();
        for (CombineMethod m : choices) {
            n.add(m.cliName);
        }
        return String.join(", ", n);
    }
}
