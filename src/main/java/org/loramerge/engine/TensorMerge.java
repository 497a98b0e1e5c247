package org.loramerge.engine;

import java.nio.ByteBuffer;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;

/**
 * The computation of one dense output tensor on a backend, from {@link Backend#openMerge} to
 * {@link #close}. Its methods may be called from several threads at once, for disjoint rows.
 */
public interface TensorMerge extends AutoCloseable {
    /** Which bytes of the source {@link #mergeRows} takes. */
    TensorSource.Form input();

    /**
     * The first pass of a tensor whose DoRA norms run down the columns
     * ({@link OutputTensor.Route#ROWS_AFTER_COLUMN_NORMS}): adds Σ v² and
     * Σ 2|v|·e of rows {@code [row0, row0 + rowCount)} to the per-column sums, {@code values}
     * holding those rows' source values ({@link TensorSource.Form#VALUES} whatever {@link #input}
     * is). {@link TensorJob#finishColumnNorms} turns the sums of all rows into the column factors
     * before the first {@link #mergeRows}.
     */
    void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) throws Exception;

    /**
     * One pass of the magnitude selection of a combination ({@link TensorJob#needsSelection()}):
     * counts rows {@code [row0, row0 + rowCount)} into the job's selections
     * ({@link DenseCombination#countRows}); the pipeline ends the pass when every block is counted.
     */
    void countSelection(long row0, int rowCount) throws Exception;

    /**
     * Called once every block of a selection pass was counted, before the pass is finished: an
     * engine that counts on its own device adds its counts to the job's selections here.
     */
    default void finishSelectionPass() throws Exception {
    }

    /**
     * Merges rows {@code [row0, row0 + rowCount)}: {@code src} holds those rows of the source in
     * the {@link #input} form, {@code dst} receives them in the output dtype, from position 0.
     */
    void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) throws Exception;

    /**
     * {@link #mergeRows} of a block of source rows that several merges of one pass over a base take
     * one after the other on this thread ({@code block}: a new object per block read, the same for
     * each of those merges). An engine may keep the rows where it put them for the first of them
     * and use them again for the others (the GPU engine uploads such a block once); the result is
     * {@link #mergeRows}'s.
     */
    default void mergeRowsOfSharedBlock(long row0, int rowCount, ByteBuffer src, Object block, ByteBuffer dst, BlockStats stats) throws Exception {
        mergeRows(row0, rowCount, src, dst, stats);
    }

    @Override
    void close();
}
