package org.loramerge.linalg;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.Future;

/**
 * The products of a pass over a large matrix, block by block, on several threads: Y = A·X for a
 * block of A's rows, and Z += Aᵀ·Q over the blocks. Each output element is one thread's sum, added
 * in ascending order of the summed index and never regrouped (each step is written out as its own
 * addition), so the result is bit for bit the same whatever the number of threads and however the
 * rows of A are cut into blocks.
 */
final class Kernels {
    private Kernels() {
    }

    /**
     * {@code y[rowCount × l] = a[rowCount × n] · x[n × l]}, all row-major, y's rows starting at
     * {@code y[yOffset]}; they are overwritten.
     */
    static void multiply(double[] a, int rowCount, int n, double[] x, int l, double[] y, int yOffset, ForkJoinPool pool) {
        int chunk = Math.max(4, (rowCount / (4 * parallelism(pool)) + 3) & ~3);
        List<Callable<Void>> tasks = new ArrayList<>();
        for (int r0 = 0; r0 < rowCount; r0 += chunk) {
            int from = r0;
            int to = Math.min(rowCount, r0 + chunk);
            tasks.add(() -> {
                multiplyRows(a, from, to, n, x, l, y, yOffset);
                return null;
            });
        }
        run(tasks, pool);
    }

    private static void multiplyRows(double[] a, int from, int to, int n, double[] x, int l, double[] y, int yOffset) {
        Arrays.fill(y, yOffset + from * l, yOffset + to * l, 0.0);
        int i = from;
        for (; i + 4 <= to; i += 4) {
            int a0 = i * n;
            int a1 = a0 + n;
            int a2 = a1 + n;
            int a3 = a2 + n;
            int y0 = yOffset + i * l;
            int y1 = y0 + l;
            int y2 = y1 + l;
            int y3 = y2 + l;
            for (int j = 0; j < n; j++) {
                double v0 = a[a0 + j];
                double v1 = a[a1 + j];
                double v2 = a[a2 + j];
                double v3 = a[a3 + j];
                int xo = j * l;
                for (int k = 0; k < l; k++) {
                    double xv = x[xo + k];
                    y[y0 + k] = y[y0 + k] + v0 * xv;
                    y[y1 + k] = y[y1 + k] + v1 * xv;
                    y[y2 + k] = y[y2 + k] + v2 * xv;
                    y[y3 + k] = y[y3 + k] + v3 * xv;
                }
            }
        }
        for (; i < to; i++) {
            int ao = i * n;
            int yo = yOffset + i * l;
            for (int j = 0; j < n; j++) {
                double v = a[ao + j];
                int xo = j * l;
                for (int k = 0; k < l; k++) {
                    y[yo + k] = y[yo + k] + v * x[xo + k];
                }
            }
        }
    }

    /**
     * {@code z[n × l] += a[rowCount × n]ᵀ · q[rowCount × l]}, all row-major, q's rows starting at
     * {@code q[qOffset]}: row j of z adds a[i, j]·q[i, ·] for i = 0, 1, ... in turn.
     */
    static void accumulateTransposed(double[] a, int rowCount, int n, double[] q, int qOffset, int l, double[] z, ForkJoinPool pool) {
        int chunk = Math.max(16, n / (4 * parallelism(pool)) + 1);
        List<Callable<Void>> tasks = new ArrayList<>();
        for (int j0 = 0; j0 < n; j0 += chunk) {
            int from = j0;
            int to = Math.min(n, j0 + chunk);
            tasks.add(() -> {
                accumulateColumns(a, rowCount, n, q, qOffset, l, z, from, to);
                return null;
            });
        }
        run(tasks, pool);
    }

    private static void accumulateColumns(double[] a, int rowCount, int n, double[] q, int qOffset, int l, double[] z, int from, int to) {
        int i = 0;
        for (; i + 4 <= rowCount; i += 4) {
            int a0 = i * n;
            int a1 = a0 + n;
            int a2 = a1 + n;
            int a3 = a2 + n;
            int q0 = qOffset + i * l;
            int q1 = q0 + l;
            int q2 = q1 + l;
            int q3 = q2 + l;
            for (int j = from; j < to; j++) {
                double v0 = a[a0 + j];
                double v1 = a[a1 + j];
                double v2 = a[a2 + j];
                double v3 = a[a3 + j];
                int zo = j * l;
                for (int k = 0; k < l; k++) {
                    z[zo + k] = (((z[zo + k] + v0 * q[q0 + k]) + v1 * q[q1 + k]) + v2 * q[q2 + k]) + v3 * q[q3 + k];
                }
            }
        }
        for (; i < rowCount; i++) {
            int ao = i * n;
            int qo = qOffset + i * l;
            for (int j = from; j < to; j++) {
                double v = a[ao + j];
                int zo = j * l;
                for (int k = 0; k < l; k++) {
                    z[zo + k] = z[zo + k] + v * q[qo + k];
                }
            }
        }
    }

    private static int parallelism(ForkJoinPool pool) {
        return pool == null ? 1 : pool.getParallelism();
    }

    private static void run(List<Callable<Void>> tasks, ForkJoinPool pool) {
        if (pool == null || tasks.size() == 1) {
            for (Callable<Void> t : tasks) {
                try {
                    t.call();
                } catch (Exception e) {
                    throw new IllegalStateException(e);
                }
            }
            return;
        }
        for (Future<Void> f : pool.invokeAll(tasks)) {
            try {
                f.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted", e);
            } catch (ExecutionException e) {
                Throwable c = e.getCause();
                if (c instanceof RuntimeException) {
                    throw (RuntimeException) c;
                }
                if (c instanceof Error) {
                    throw (Error) c;
                }
                throw new IllegalStateException(c);
            }
        }
    }
}
