package org.loramerge.batch;

import java.util.List;
import org.loramerge.api.MergeResult;

/**
 * What a batch did: one result per manifest line, in manifest order, and the totals. The
 * {@code batch --json} summary is this record with snake_case keys.
 *
 * @param manifest the manifest file
 * @param state    the state folder
 * @param merges   per manifest line that is not blank or a comment
 * @param totals   the counts, bytes and the batch's exit code
 */
public record BatchResult(String manifest, String state, List<LineResult> merges, Totals totals) {
    public static final String DONE = "done";
    public static final String SKIPPED = "skipped";
    public static final String FAILED = "failed";

    public BatchResult {
        merges = List.copyOf(merges);
    }

    /**
     * One manifest line's outcome.
     *
     * @param line     the line's number in the manifest, from 1
     * @param out      its output folder (resolved), or null when the line could not be read
     * @param status   {@code done} (merged now), {@code skipped} (its output is there with the recorded
     *                 checksum) or {@code failed}
     * @param seconds  the merge's time, from the call to the commit (0 when skipped or failed up front)
     * @param bytes    tensor bytes written (done), or those recorded (skipped)
     * @param checksum the SHA-256 of the output's file listing (BatchState.checksum); null when failed
     * @param engine   the engine that ran, as it describes itself; null unless done
     * @param device   the device the batch gave the line ({@code cpu}, {@code cuda:N}); null unless run
     * @param exitCode failed: the exit code {@code loramerge merge} would have ended with; else null
     * @param error    failed: the reason, naming the file and the fix; else null
     * @param summary  done: the merge's own summary, as {@code merge --json} prints it; else null
     */
    public record LineResult(int line, String out, String status, double seconds, long bytes, String checksum, String engine,
                             String device, Integer exitCode, String error, MergeResult summary) {
        static LineResult failed(int line, String out, String device, int exitCode, String error, double seconds) {
            return new LineResult(line, out, FAILED, seconds, 0, null, null, device, exitCode, error, null);
        }
    }

    /**
     * @param lines    manifest lines (not blank, not comments)
     * @param done     merged now
     * @param skipped  already there with the recorded checksum
     * @param failed   failed, or not run because the line is bad
     * @param bytes    tensor bytes written by this run
     * @param seconds  the batch's time
     * @param exitCode the batch's exit code: 0 when no line failed, else 3
     */
    public record Totals(int lines, int done, int skipped, int failed, long bytes, double seconds, int exitCode) {
    }
}
