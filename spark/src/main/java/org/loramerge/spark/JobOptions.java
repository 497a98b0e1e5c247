package org.loramerge.spark;

import java.io.Serializable;

/**
 * How the job runs its lines; the same for every task.
 *
 * @param device            the engine of a task that Spark gave no GPU: cpu, auto, cuda or cuda:N
 * @param commit            auto, rename or marker ({@link OutputCommit.Mode})
 * @param claimTimeoutMillis on object stores, how long an unrefreshed claim is honoured before its
 *                          holder is taken for dead
 * @param workDir           the executors' local folder for merges before upload and for copied
 *                          inputs; null: the executor JVM's java.io.tmpdir
 * @param maxFailures       how many attempts Spark gives a task: on the last, a failure becomes a
 *                          failed row rather than a failed task, so the job goes on
 * @param failAfterFiles    test hook: the first attempt of every task fails after uploading this
 *                          many files (0: never)
 * @param slowFirstMillis   test hook: the first attempt of every task waits this long before it
 *                          commits (0: never), so a speculative copy can overtake it
 */
record JobOptions(String device, String commit, long claimTimeoutMillis, String workDir, int maxFailures, int failAfterFiles,
                  long slowFirstMillis) implements Serializable {
}
