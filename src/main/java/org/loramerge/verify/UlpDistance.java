package org.loramerge.verify;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.loramerge.engine.Pools;
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

    /**
     * Compares tensors {@code names} of {@code result} with the same tensors of {@code original};
     * {@code merged} gives the merged values. The chunks are compared on every core at once; the
     * counts and maxima do not depend on the order they finish in.
     */
    public static Result measure(Checkpoint result, Checkpoint original, Checkpoint merged, List<String> names) throws IOException {
        return measure(result, original, merged, names, Runtime.getRuntime().availableProcessors());
    }

    /** {@link #measure(Checkpoint, Checkpoint, Checkpoint, List)} on {@code threads} threads. */
    static Result measure(Checkpoint result, Checkpoint original, Checkpoint merged, List<String> names, int threads) throws IOException {
        List<TensorSource[]> sources = new ArrayList<>();
        for (String name : names) {
            TensorSource r = source(result, name);
            TensorSource o = source(original, name);
            TensorSource m = source(merged, name);
            long n = o.info().numElements();
            if (r.info().numElements() != n || m.info().numElements() != n) {
                throw new IllegalArgumentException(name + " has different sizes in the checkpoints compared");
            }
            sources.add(new TensorSource[] {r, o, m});
        }
        ExecutorService pool = Executors.newFixedThreadPool(Math.max(1, threads), r -> {
            Thread t = new Thread(r, "loramerge-distance");
            t.setDaemon(true);
            return t;
        });
        List<List<Future<TensorDistance>>> parts = new ArrayList<>();
        try {
            for (int k = 0; k < names.size(); k++) {
                String name = names.get(k);
                TensorSource[] s = sources.get(k);
                long n = s[1].info().numElements();
                List<Future<TensorDistance>> chunks = new ArrayList<>();
                for (long e0 = 0; e0 < n; e0 += CHUNK_ELEMENTS) {
                    long first = e0;
                    int count = (int) Math.min(CHUNK_ELEMENTS, n - e0);
                    chunks.add(pool.submit(() -> chunk(name, s[0], s[1], s[2], first, count)));
                }
                parts.add(chunks);
            }
            List<TensorDistance> out = new ArrayList<>();
            long elements = 0;
            long equal = 0;
            long within = 0;
            long beyond = 0;
            double worst = 0;
            double worstMerged = 0;
            for (int k = 0; k < names.size(); k++) {
                TensorDistance d = new TensorDistance(names.get(k), 0, 0, 0, 0, 0, 0);
                for (Future<TensorDistance> f : parts.get(k)) {
                    d = plus(d, get(f));
                }
                out.add(d);
                elements += d.elements();
                equal += d.equal();
                within += d.withinOneUlp();
                beyond += d.beyondOneUlp();
                worst = Math.max(worst, d.worstUlp());
                worstMerged = Math.max(worstMerged, d.worstMergedUlp());
            }
            return new Result(out, elements, equal, within, beyond, worst, worstMerged);
        } finally {
            // the chunks read the checkpoints, which the caller closes next
            List<Future<TensorDistance>> all = new ArrayList<>();
            parts.forEach(all::addAll);
            Pools.cancelAndAwait(pool, all);
        }
    }

    private static TensorDistance plus(TensorDistance a, TensorDistance b) {
        return new TensorDistance(a.name(), a.elements() + b.elements(), a.equal() + b.equal(), a.withinOneUlp() + b.withinOneUlp(),
                a.beyondOneUlp() + b.beyondOneUlp(), Math.max(a.worstUlp(), b.worstUlp()), Math.max(a.worstMergedUlp(), b.worstMergedUlp()));
    }

    private static TensorDistance get(Future<TensorDistance> f) throws IOException {
        try {
            return f.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while measuring the distance to the base", e);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof IOException io) {
                throw io;
            }
            if (e.getCause() instanceof RuntimeException re) {
                throw re;
            }
            throw new IllegalStateException(e.getCause());
        }
    }

    private static TensorSource source(Checkpoint c, String name) {
        TensorInfo t = c.tensor(name);
        if (t == null) {
            throw new IllegalArgumentException(c.dir() + " has no tensor " + name);
        }
        return new TensorSource(c.fileOf(name), t);
    }

    /** Elements {@code [first, first + count)} of one tensor in the three checkpoints. */
    private static TensorDistance chunk(String name, TensorSource result, TensorSource original, TensorSource merged, long first, int count)
            throws IOException {
        FloatFormat fr = FloatFormat.of(result.dtype());
        FloatFormat fo = FloatFormat.of(original.dtype());
        FloatFormat fm = FloatFormat.of(merged.dtype());
        long equal = 0;
        long within = 0;
        long beyond = 0;
        double worst = 0;
        double worstMerged = 0;
        try (TensorSource.Bytes r = result.read(first * fr.sizeInBytes(), (long) count * fr.sizeInBytes());
             TensorSource.Bytes o = original.read(first * fo.sizeInBytes(), (long) count * fo.sizeInBytes());
             TensorSource.Bytes m = merged.read(first * fm.sizeInBytes(), (long) count * fm.sizeInBytes())) {
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
        return new TensorDistance(name, count, equal, within, beyond, worst, worstMerged);
    }
}
