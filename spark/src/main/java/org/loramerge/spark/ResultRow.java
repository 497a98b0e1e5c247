package org.loramerge.spark;

import java.io.Serializable;

/**
 * One line of the result table (JSON Lines, snake_case keys).
 *
 * @param line         the manifest line
 * @param out          the output location as the manifest wrote it
 * @param status       done (merged by this run), skipped (already committed, its files matching
 *                     their record) or failed
 * @param error        why the line failed; null otherwise
 * @param seconds      the line's time in its task: copying inputs, merging, committing
 * @param bytes        the output's size, every file but the completion record
 * @param checksum     SHA-256 over the output's files (CompletionMarker#checksum)
 * @param verification with verify on the line: what the check recomputed and the worst error; else null
 * @param device       the engine the line ran on (cuda:N from the task's GPU, or the job's --device)
 * @param attempt      the Spark attempt number of the task that made the row (0: the first)
 */
public record ResultRow(int line, String out, String status, String error, double seconds, long bytes, String checksum,
                        String verification, String device, int attempt) implements Serializable {
    static final String DONE = "done";
    static final String SKIPPED = "skipped";
    static final String FAILED = "failed";

    static ResultRow failed(int line, String out, String error, double seconds, String device, int attempt) {
        return new ResultRow(line, out, FAILED, error, seconds, 0, null, null, device, attempt);
    }
}
