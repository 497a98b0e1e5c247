package org.loramerge.verify;

import java.util.Locale;

/**
 * What {@code verify} accepts as a correct merge.
 *
 * <ul>
 * <li>{@link Mode#ULP}: every sampled element within {@code maxUlp} units in the last place of the
 * correctly rounded exact merge (0: bit for bit; loramerge's own output). Strict: a tool that
 * accumulates in fp32 fails it on F32 models, where fp32's error is many ulps of the result.
 * <li>{@link Mode#FP32_ACCUMULATION}: every sampled element within the error that a merge computed in
 * fp32 arithmetic may have (PEFT's {@code merge_and_unload}, or any tool that adds an fp32 ΔW),
 * bounded element by element from |W| and Σ|s·U·V| ({@link Fp32Bound}; docs/FORMATS.md §10 derives
 * it). Any correct merge passes it, whatever tool made it; a wrong scale, a missing or doubled
 * term, a transposed factor or a wrong rounding of the result fails.
 * </ul>
 */
public record Tolerance(Mode mode, double maxUlp) {
    public enum Mode {
        ULP,
        FP32_ACCUMULATION
    }

    /** Within {@code maxUlp} ulp of the correctly rounded merge. */
    public static Tolerance ulp(double maxUlp) {
        return new Tolerance(Mode.ULP, maxUlp);
    }

    /** Within the error bound of a merge computed in fp32. */
    public static Tolerance fp32Accumulation() {
        return new Tolerance(Mode.FP32_ACCUMULATION, Double.NaN);
    }

    /** As the command line names it: {@code ulp} or {@code fp32-accumulation}. */
    public String cliName() {
        return mode == Mode.ULP ? "ulp" : "fp32-accumulation";
    }

    /** A line for the report: which check ran. */
    public String describe() {
        return mode == Mode.ULP
                ? String.format(Locale.ROOT, "ulp (at most %s ulp from the correctly rounded merge)", number(maxUlp))
                : "fp32-accumulation (within the error bound of a merge computed in fp32, element by element)";
    }

    private static String number(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : Double.toString(v);
    }
}
