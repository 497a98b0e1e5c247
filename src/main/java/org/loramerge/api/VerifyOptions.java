package org.loramerge.api;

import org.loramerge.verify.Tolerance;

/**
 * How {@link LoraMerge#verify} checks a merged model.
 *
 * @param rows      rows sampled per adapted tensor
 * @param tolerance what counts as correct: {@link Tolerance#ulp} (strict) or {@link Tolerance#fp32Accumulation()} (any tool's output)
 * @param to        for a bitsandbytes 4-bit base: the {@code --to} the merge ran with; else null
 */
public record VerifyOptions(int rows, Tolerance tolerance, String to) {
    /** 16 rows per tensor, at most 1 ulp from the correctly rounded merge. */
    public static VerifyOptions defaults() {
        return new VerifyOptions(16, Tolerance.ulp(1), null);
    }

    public VerifyOptions withRows(int newRows) {
        return new VerifyOptions(newRows, tolerance, to);
    }

    public VerifyOptions withTolerance(Tolerance newTolerance) {
        return new VerifyOptions(rows, newTolerance, to);
    }

    public VerifyOptions withTo(String newTo) {
        return new VerifyOptions(rows, tolerance, newTo);
    }
}
