package org.loramerge.engine.cpu;

import java.nio.ByteBuffer;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.plan.TensorSource;

/** A dense output tensor on the CPU: {@link CpuMerge} on the source's values. Holds nothing but the job. */
public final class CpuTensorMerge implements TensorMerge {
    private final TensorJob job;

    public CpuTensorMerge(TensorJob job) {
        this.job = job;
    }

    @Override
    public TensorSource.Form input() {
        return TensorSource.Form.VALUES;
    }

    @Override
    public void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, values, sumSq, sumErr);
    }

    @Override
    public void countSelection(long row0, int rowCount) {
        job.dense().countRows(row0, rowCount);
    }

    @Override
    public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats, null);
    }

    @Override
    public void close() {
    }
}
