package org.loramerge.pipeline;

import org.loramerge.plan.OutputTensor;

/**
 * How one kind of output tensor is written: the work on its row blocks is submitted to the
 * executor, each worker stores its block at its own offset in the current shard, and the
 * completions (progress, errors) are queued in order. One strategy
 * per {@link OutputTensor.Route}, which the plan chose.
 */
interface TensorStrategy {
    void schedule(OutputTensor t, MergeContext ctx) throws Exception;

    static TensorStrategy of(OutputTensor.Route route) {
        switch (route) {
            case BYTE_COPY:
                return ByteCopy.INSTANCE;
            case ROWS:
            case ROWS_AFTER_COLUMN_NORMS:
                return RowMerge.INSTANCE;
            case REQUANTIZE:
                return Requantize.INSTANCE;
            default:
                throw new IllegalStateException("no strategy for " + route);
        }
    }
}
