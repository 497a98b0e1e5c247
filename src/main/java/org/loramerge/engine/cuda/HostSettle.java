package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.util.Arrays;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.ExactMath;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.FloatFormat;

/**
 * The host's part of a GPU block: the few elements whose fp64 bound straddles a rounding boundary
 * (listed by merge_round) are computed exactly with the CPU engine's {@link ExactMath.Rounder} and
 * rounded once, so the block's bytes are the CPU engine's.
 */
final class HostSettle {
    private HostSettle() {
    }

    /** Where {@link #settle} puts an element's bits: {@code element} indexes the block. */
    interface Sink {
        void put(long element, int bits);
    }

    private static final ThreadLocal<ExactMath.Rounder> ROUNDER = ThreadLocal.withInitial(ExactMath.Rounder::new);

    /**
     * Decides the block's {@code count} ambiguous elements, listed (in no order) in {@code idx}:
     * each is computed exactly from W ({@code src}, the block in the source format) and rounded
     * once, then handed to {@code sink}. Counts into {@code stats} how they were decided; returns
     * how many overflowed to ±Inf.
     */
    static long settle(TensorJob job, long row0, ByteBuffer src, ByteBuffer idx, int count, Sink sink, BlockStats stats) {
        int cols = job.cols();
        FloatFormat srcFmt = job.srcFormat();
        FloatFormat fmt = job.dstFormat();
        long[] elements = new long[count];
        for (int a = 0; a < count; a++) {
            elements[a] = idx.getLong(a * 8);
        }
        Arrays.sort(elements); // sorted, each row is decoded once
        double[] row = new double[cols];
        int rowDecoded = -1;
        long overflows = 0;
        long decimal = 0;
        ExactMath.Rounder rounder = ROUNDER.get();
        for (long e : elements) {
            int i = (int) (e / cols);
            int j = (int) (e % cols);
            if (i != rowDecoded) {
                for (int c = 0; c < cols; c++) {
                    row[c] = srcFmt.decode(srcFmt.bitsAt(src, (long) i * cols + c));
                }
                rowDecoded = i;
            }
            double y = rounder.round(job, row, row0 + i, j, fmt);
            if (rounder.lastWasDecimal()) {
                decimal++;
            }
            if (Double.isInfinite(y)) {
                overflows++;
            }
            sink.put(e, fmt.encode(y));
        }
        stats.add(decimal, 0, 0);
        stats.addExactlyRounded(count - decimal);
        return overflows;
    }
}
