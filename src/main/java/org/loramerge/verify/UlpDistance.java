package org.loramerge.verify;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.TensorSource;

/**
 * How far the tensors of one checkpoint land from those of another, element by element, in units
 * in the last place: what {@code unmerge --base} reports of the base it recovered. Each distance
 * is counted in two units: the ulp of the original value in its own dtype, and the ulp of the
 * merged value the unmerge started from (an exactly rounded merge and an exactly rounded unmerge
 * each move a value by at most half of the ulp at the value they round).
 */
public final class UlpDistance {
    private static final int CHUNK_ELEMENTS = 1 << 20;

    /**
     * One tensor.
     *
     * @param equal          elements equal to the original (NaN to NaN counts as equal)
     * @param withinOneUlp   elements 1 ulp of the original away or less, but not equal
     * @param beyondOneUlp   elements further away
     * @param worstUlp       the largest distance in ulps of the original value
     * @param worstMergedUlp the largest distance in ulps of the merged value
     */
    public record TensorDistance(String name, long elements, long equal, long withinOneUlp, long beyondOneUlp, double worstUlp, double worstMergedUlp) {
    }

    /** All tensors compared, and the totals. */
    public record Result(List<TensorDistance> tensors, long elements, long equal, long withinOneUlp, long beyondOneUlp, double worstUlp,
                         double worstMergedUlp) {
    }

    private UlpDistance() {
    }

    /** Compares tensors {@code names} of {@code result} with the same tensors of {@code original}; {@code merged} gives the merged values. */
    public static Result measure(Checkpoint result, Checkpoint original, Checkpoint merged, List<String> names) throws IOException {
        List<TensorDistance> out = new ArrayList<>();
        long elements = 0;
        long equal = 0;
        long within = 0;
        long beyond = 0;
        double worst = 0;
        double worstMerged = 0;
        for (String name : names) {
            TensorDistance d = tensor(name, source(result, name), source(original, name), source(merged, name));
            out.add(d);
            elements += d.elements();
            equal += d.equal();
            within += d.withinOneUlp();
            beyond += d.beyondOneUlp();
            worst = Math.max(worst, d.worstUlp());
            worstMerged = Math.max(worstMerged, d.worstMergedUlp());
        }
        return new Result(out, elements, equal, within, beyond, worst, worstMerged);
    }

    private static TensorSource source(Checkpoint c, String name) {
        TensorInfo t = c.tensor(name);
        if (t == null) {
            throw new IllegalArgumentException(c.dir() + " has no tensor " + name);
        }
        return new TensorSource(c.fileOf(name), t);
    }

    private static TensorDistance tensor(String name, TensorSource result, TensorSource original, TensorSource merged) throws IOException {
        FloatFormat fr = FloatFormat.of(result.dtype());
        FloatFormat fo = FloatFormat.of(original.dtype());
        FloatFormat fm = FloatFormat.of(merged.dtype());
        long n = original.info().numElements();
        if (result.info().numElements() != n || merged.info().numElements() != n) {
            throw new IllegalArgumentException(name + " has different sizes in the checkpoints compared");
        }
        long equal = 0;
        long within = 0;
        long beyond = 0;
        double worst = 0;
        double worstMerged = 0;
        for (long e0 = 0; e0 < n; e0 += CHUNK_ELEMENTS) {
            int count = (int) Math.min(CHUNK_ELEMENTS, n - e0);
            try (TensorSource.Bytes r = result.read(e0 * fr.sizeInBytes(), (long) count * fr.sizeInBytes());
                 TensorSource.Bytes o = original.read(e0 * fo.sizeInBytes(), (long) count * fo.sizeInBytes());
                 TensorSource.Bytes m = merged.read(e0 * fm.sizeInBytes(), (long) count * fm.sizeInBytes())) {
                ByteBuffer rb = r.bytes();
                ByteBuffer ob = o.bytes();
                ByteBuffer mb = m.bytes();
                for (int i = 0; i < count; i++) {
                    double x = fr.decode(fr.bitsAt(rb, i));
                    double y = fo.decode(fo.bitsAt(ob, i));
                    if (x == y || Double.isNaN(x) && Double.isNaN(y)) {
                        equal++;
                        continue;
                    }
                    double diff = Math.abs(x - y); // exact: both are values of 16- or 32-bit formats
                    double ulps = Double.isFinite(diff) ? diff / fo.ulp(y) : Double.POSITIVE_INFINITY;
                    double w = fm.decode(fm.bitsAt(mb, i));
                    double mergedUlps = Double.isFinite(diff) && Double.isFinite(w) ? diff / fm.ulp(w) : Double.POSITIVE_INFINITY;
                    if (ulps <= 1) {
                        within++;
                    } else {
                        beyond++;
                    }
                    worst = Math.max(worst, ulps);
                    worstMerged = Math.max(worstMerged, mergedUlps);
                }
            }
        }
        return new TensorDistance(name, n, equal, within, beyond, worst, worstMerged);
    }
}
