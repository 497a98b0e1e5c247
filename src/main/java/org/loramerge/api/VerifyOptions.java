package org.loramerge.api;

import org.loramerge.verify.Tolerance;
import org.loramerge.verify.Verifier;

/**
 * How {@link LoraMerge#verify} checks a merged model.
 *
 * @param rows           rows recomputed per adapted tensor ({@link #ALL_ROWS}: every row); unchanged
 *                       tensors are always compared completely
 * @param tolerance      what counts as correct: {@link Tolerance#ulp} (strict) or {@link Tolerance#fp32Accumulation()} (any tool's output)
 * @param to             for a bitsandbytes 4-bit base: the {@code --to} the merge ran with; else null
 * @param followSymlinks read the input folders' files wherever their symbolic links lead
 */
public record VerifyOptions(int rows, Tolerance tolerance, String to, boolean followSymlinks) {
    /** A row count that means every row of every adapted tensor ({@code --rows all}). */
    public static final int ALL_ROWS = Verifier.ALL_ROWS;

    /** 16 rows per tensor, at most 1 ulp from the correctly rounded merge. */
    public static VerifyOptions defaults() {
        return new VerifyOptions(16, Tolerance.ulp(1), null, false);
    }

    public VerifyOptions withRows(int newRows) {
        return new VerifyOptions(newRows, tolerance, to, followSymlinks);
    }

    public VerifyOptions withTolerance(Tolerance newTolerance) {
        return new VerifyOptions(rows, newTolerance, to, followSymlinks);
    }

    public VerifyOptions withTo(String newTo) {
        return new VerifyOptions(rows, tolerance, newTo, followSymlinks);
    }

    public VerifyOptions withFollowSymlinks(boolean follow) {
        return new VerifyOptions(rows, tolerance, to, follow);
    }
}
