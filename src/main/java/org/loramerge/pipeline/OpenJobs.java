package org.loramerge.pipeline;

import org.loramerge.engine.TensorJob;
import org.loramerge.plan.OutputTensor;

/**
 * The heap held by the tensors a merge has open: a tensor is open from the preparing of its job
 * (its factors in doubles, a requantized weight's codes: {@link TensorJob#heapBytes}) to the step
 * after its last block. How many can be open at once otherwise depends on the window, which grows
 * with the threads and with the shards written at once (a lane each, {@link BlockExecutor}): about
 * half a window of one-block tensors. Before a tensor is opened, the writing thread completes the
 * oldest steps (closing the oldest tensors) until its bytes fit in the budget beside the open ones'
 * or none is open, so a tensor larger than the budget runs alone rather than never. Opening and
 * closing happen on the writing thread, so there is no lock.
 */
final class OpenJobs {
    private final long budgetBytes;
    private long heldBytes;

    OpenJobs(long budgetBytes) {
        this.budgetBytes = budgetBytes;
    }

    /**
     * Waits, completing {@code executor}'s oldest steps, until jobs for {@code ts} fit beside the open
     * tensors' or none is open, then counts them as open; returns the bytes to hand to {@link #close}
     * in the step after their last block.
     */
    long open(Iterable<OutputTensor> ts, BlockExecutor executor) throws Exception {
        long bytes = 0;
        for (OutputTensor t : ts) {
            bytes += TensorJob.heapBytes(t);
        }
        // every open tensor's closing step is queued, so the loop ends with room or with none open
        while (heldBytes > 0 && heldBytes + bytes > budgetBytes && executor.completeOldest()) {
            // the oldest step completed; look again
        }
        heldBytes += bytes;
        return bytes;
    }

    /** The tensors counted by the {@link #open} that returned {@code bytes} are written. */
    void close(long bytes) {
        heldBytes -= bytes;
    }
}
