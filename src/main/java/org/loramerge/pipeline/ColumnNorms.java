package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Future;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;

/**
 * The first pass of a tensor whose DoRA norms run down the columns
 * ({@link OutputTensor.Route#ROWS_AFTER_COLUMN_NORMS}): every row block's column sums on the
 * workers, added in block order (the same sums whatever the thread count), then the column
 * factors set on the job before any row is merged.
 */
final class ColumnNorms {
    private ColumnNorms() {
    }

    static void compute(MergeContext ctx, TensorJob job, TensorMerge merge, int rowsPerBlock) throws Exception {
        OutputTensor t = job.out();
        int cols = job.cols();
        List<Future<double[][]>> parts = new ArrayList<>();
        for (long row0 = 0; row0 < job.rows(); row0 += rowsPerBlock) {
            long r0 = row0;
            int n = (int) Math.min(rowsPerBlock, job.rows() - row0);
            parts.add(ctx.executor.submit(() -> {
                double[] sumSq = new double[cols];
                double[] sumErr = new double[cols];
                try (TensorSource.Bytes src = t.source().readRows(TensorSource.Form.VALUES, r0, n, cols)) {
                    merge.columnSums(r0, n, src.bytes(), sumSq, sumErr);
                }
                return new double[][] {sumSq, sumErr};
            }));
        }
        double[] sumSq = new double[cols];
        double[] sumErr = new double[cols];
        for (Future<double[][]> f : parts) {
            double[][] p = BlockExecutor.get(f);
            for (int j = 0; j < cols; j++) {
                sumSq[j] += p[0][j];
                sumErr[j] += p[1][j];
            }
        }
        job.finishColumnNorms(sumSq, sumErr);
    }
}
