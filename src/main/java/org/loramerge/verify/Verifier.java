package org.loramerge.verify;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.LongStream;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Decoder;
import org.loramerge.quant.Nf4Output;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantState;
import org.loramerge.quant.Requantizer;

/**
 * Checks a merged checkpoint against base + adapter: every tensor present with the planned shape;
 * every tensor the adapter leaves alone compared completely (byte for byte where it is a copy,
 * streamed in windows of the memory map at disk speed; value for value where it is converted or
 * dequantized); and for a sample of rows of every adapted tensor (or every row), the worst error in
 * units in the last place against the correctly rounded exact merge, NaN/Inf counts, and whether the
 * adapter's change is there at all.
 */
public final class Verifier {
    /** A row count for {@link #verify}: every row of every adapted tensor ({@code --rows all}). */
    public static final int ALL_ROWS = Integer.MAX_VALUE;
    /** Bytes of a tensor compared, or recomputed, at a time. */
    static final long WINDOW_BYTES = 64L << 20;
    static final long BLOCK_BYTES = 8L << 20;

    /**
     * One tensor's findings.
     *
     * @param worstBoundShare with {@link Tolerance.Mode#FP32_ACCUMULATION}: the largest error as a share of its
     *                        element's bound (at most 1 passes); NaN in ulp mode and for tensors checked by bytes
     */
    public record TensorCheck(String name, OutputTensor.Kind kind, int rowsChecked, long elementsChecked, long elementsDiffering,
                              double worstUlp, long nonFinite, boolean notApplied, String problem, double worstBoundShare) {
        TensorCheck(String name, OutputTensor.Kind kind, int rowsChecked, long elementsChecked, long elementsDiffering,
                    double worstUlp, long nonFinite, boolean notApplied, String problem) {
            this(name, kind, rowsChecked, elementsChecked, elementsDiffering, worstUlp, nonFinite, notApplied, problem, Double.NaN);
        }
    }

    /** All findings, and the tolerance they were judged by. */
    public record Result(List<TensorCheck> tensors, List<String> problems, double worstUlp, Tolerance tolerance) {
        public boolean passed() {
            return problems.isEmpty();
        }

        /** The largest error as a share of its bound over all tensors (fp32-accumulation mode), else NaN. */
        public double worstBoundShare() {
            return tensors.stream().mapToDouble(TensorCheck::worstBoundShare).filter(d -> !Double.isNaN(d)).max().orElse(Double.NaN);
        }
    }

    private Verifier() {
    }

    /**
     * @param sampleRows rows recomputed per adapted tensor (NF4 blocks per requantized weight);
     *                   {@link #ALL_ROWS} for all of them. Tensors the adapter leaves alone are
     *                   always compared completely.
     */
    public static Result verify(MergePlan plan, Checkpoint merged, int sampleRows, double maxUlp) throws IOException {
        return verify(plan, merged, sampleRows, Tolerance.ulp(maxUlp));
    }

    /** Checks {@code merged} against the plan of base + adapter, judging recomputed values by {@code tolerance}; rows as above. */
    public static Result verify(MergePlan plan, Checkpoint merged, int sampleRows, Tolerance tolerance) throws IOException {
        double maxUlp = tolerance.mode() == Tolerance.Mode.ULP ? tolerance.maxUlp() : Double.POSITIVE_INFINITY;
        List<TensorCheck> checks = new ArrayList<>();
        List<String> problems = new ArrayList<>();
        double worst = 0;
        Set<String> plannedNames = new HashSet<>();
        for (OutputTensor planned : plan.tensors()) {
            planned.entries().forEach(e -> plannedNames.add(e.name()));
            TensorInfo m = merged.tensor(planned.name());
            if (m == null) {
                problems.add(planned.name() + " is missing from the merged model");
                continue;
            }
            if (planned.isRequantized()) {
                TensorCheck c = planned.quantizedOutput() instanceof Nf4Output ? checkRequantized(planned, merged, sampleRows)
                        : checkRequantizedByReplay(planned, merged);
                checks.add(c);
                if (c.problem() != null) {
                    problems.add(planned.name() + ": " + c.problem());
                }
                continue;
            }
            if (!Arrays.equals(m.shape(), planned.shape())) {
                problems.add(planned.name() + " has shape " + TensorInfo.shapeString(m.shape()) + ", expected " + TensorInfo.shapeString(planned.shape()));
                continue;
            }
            boolean floating = m.dtype().isMergeable() && planned.source().dtype().isMergeable();
            if (!floating && m.dtype() != planned.dtype()) {
                problems.add(planned.name() + " is " + m.dtype() + ", expected " + planned.dtype());
                continue;
            }
            SafetensorsFile mf = merged.fileOf(m.name());
            TensorCheck c;
            if (!floating || (planned.isByteCopy() && m.dtype() == planned.dtype())) {
                c = checkBytes(planned, m, mf); // unchanged: every byte
            } else {
                c = checkValues(planned, m, mf, planned.isAdapted() ? sampleRows : ALL_ROWS, tolerance); // converted or dequantized: every row
            }
            checks.add(c);
            worst = Math.max(worst, c.worstUlp());
            if (c.problem() != null) {
                problems.add(planned.name() + ": " + c.problem());
            } else if (c.worstUlp() > maxUlp) {
                problems.add(planned.name() + ": worst error " + c.worstUlp() + " ulp exceeds " + maxUlp);
            } else if (c.worstBoundShare() > 1) {
                problems.add(planned.name() + String.format(Locale.ROOT, ": worst error %.4g ulp is %.3g times the fp32-accumulation bound; "
                        + "the merge is wrong beyond fp32 rounding (a wrong scale, a missing or extra term, or another adapter)",
                        c.worstUlp(), c.worstBoundShare()));
            } else if (c.nonFinite() > 0) {
                problems.add(planned.name() + ": " + c.nonFinite() + " NaN/Inf values in the rows checked, where the exact merge is finite");
            } else if (c.notApplied()) {
                problems.add(planned.name() + ": the adapter's change is not there (the rows checked equal the base)");
            }
        }
        for (String name : merged.tensors().keySet()) {
            if (!plannedNames.contains(name)) {
                problems.add("the merged model has tensor " + name + ", which base + adapter do not produce");
            }
        }
        return new Result(checks, problems, worst, tolerance);
    }

    /** {@code count} rows of {@code rows}, always the first and the last, the same ones for the same seed; all of them when count reaches rows. */
    static long[] sampleRows(long rows, int count, long seed) {
        if (count >= rows) {
            return LongStream.range(0, rows).toArray();
        }
        TreeSet<Long> set = new TreeSet<>();
        set.add(0L);
        set.add(rows - 1);
        Random rnd = new Random(seed);
        while (set.size() < count) {
            set.add((long) (rnd.nextDouble() * rows));
        }
        return set.stream().mapToLong(Long::longValue).toArray();
    }

    /** Work on a run of consecutive rows (or NF4 blocks). */
    private interface Run {
        void check(long first, int count) throws IOException;
    }

    /**
     * Calls {@code run} on runs of at most {@code most} consecutive items: of all {@code total} items
     * when {@code count} reaches it (without listing them: a 1-D tensor has as many rows as elements),
     * else of a sample of {@code count}.
     */
    private static void forEachRun(long total, int count, long seed, int most, Run run) throws IOException {
        if (count >= total) {
            for (long first = 0; first < total; first += most) {
                run.check(first, (int) Math.min(most, total - first));
            }
            return;
        }
        long[] items = sampleRows(total, count, seed);
        for (int i = 0; i < items.length; ) {
            int n = 1;
            while (i + n < items.length && n < most && items[i + n] == items[i] + n) {
                n++;
            }
            run.check(items[i], n);
            i += n;
        }
    }

    /** An unchanged tensor: its bytes against the source's, all of them, in windows of the memory map. */
    private static TensorCheck checkBytes(OutputTensor planned, TensorInfo m, SafetensorsFile mf) throws IOException {
        long size = m.sizeInBytes();
        if (size != planned.sizeInBytes()) {
            return new TensorCheck(planned.name(), planned.kind(), 0, 0, m.numElements(), 0, 0, false,
                    "holds " + size + " bytes, expected " + planned.sizeInBytes());
        }
        // offsets in whole elements; sub-byte types are compared byte by byte
        int elementBytes = m.dtype().bits() % 8 == 0 ? m.dtype().sizeInBytes() : 1;
        long differing = 0;
        long first = -1;
        String firstValues = "";
        for (long off = 0; off < size; off += WINDOW_BYTES) {
            int n = (int) Math.min(WINDOW_BYTES, size - off);
            try (MappedRegion a = planned.source().file().map(planned.source().info(), off, n); MappedRegion b = mf.map(m, off, n)) {
                ByteBuffer x = a.bytes();
                ByteBuffer y = b.bytes();
                int pos = 0;
                while (pos < n) {
                    int mm = x.slice(pos, n - pos).mismatch(y.slice(pos, n - pos));
                    if (mm < 0) {
                        break;
                    }
                    int at = (pos + mm) / elementBytes * elementBytes;
                    if (first < 0) {
                        first = (off + at) / elementBytes;
                        firstValues = values(m, x, y, at);
                    }
                    differing++;
                    pos = at + elementBytes;
                }
            }
        }
        String problem = null;
        if (differing > 0) {
            long cols = Math.max(1, planned.cols());
            problem = differing + (differing == 1 ? " element differs" : " elements differ") + " from the base, which the adapter leaves unchanged; the first is element "
                    + first + (planned.shape().length > 1 ? " (row " + first / cols + ", column " + first % cols + ")" : "") + firstValues
                    + ". The merged model was changed after it was written, or written wrongly: merge again";
        }
        return new TensorCheck(planned.name(), planned.kind(), (int) Math.min(planned.rows(), Integer.MAX_VALUE), m.numElements(), differing,
                0, 0, false, problem);
    }

    /** ", base V, merged W" for a floating-point element at byte {@code at} of both windows. */
    private static String values(TensorInfo m, ByteBuffer base, ByteBuffer merged, int at) {
        if (!m.dtype().isMergeable()) {
            return "";
        }
        FloatFormat fmt = FloatFormat.of(m.dtype());
        long index = at / fmt.sizeInBytes();
        return ": base " + fmt.decode(fmt.bitsAt(base, index)) + ", merged " + fmt.decode(fmt.bitsAt(merged, index));
    }

    /** What the element-by-element comparison of a tensor found. */
    private static final class Tally {
        long checked;
        long differing;
        long nonFinite;
        double worst;
        /** fp32-accumulation mode: the largest error as a share of its element's bound; NaN in ulp mode. */
        double worstShare = Double.NaN;
        boolean anyChange;
        boolean allEqualBase = true;
    }

    /**
     * Rows of a merged, replaced, converted or dequantized tensor recomputed exactly (sampled, or
     * all), block by block, against the merged model's bytes.
     */
    private static TensorCheck checkValues(OutputTensor planned, TensorInfo m, SafetensorsFile mf, int sampleRows, Tolerance tolerance)
            throws IOException {
        TensorJob job = TensorJob.prepare(planned.withDtype(m.dtype()));
        if (job.needsSelection()) {
            job.dense().selectAll(job.rows()); // a combination's top-D cut depends on the whole tensor
        }
        int cols = job.cols();
        long srcRowBytes = (long) cols * planned.source().dtype().sizeInBytes();
        long outRowBytes = (long) cols * m.dtype().sizeInBytes();
        int blockRows = (int) Math.max(1, BLOCK_BYTES / Math.max(1, Math.max(srcRowBytes, outRowBytes)));
        boolean fp32 = tolerance.mode() == Tolerance.Mode.FP32_ACCUMULATION;
        if (fp32) {
            blockRows = (int) Math.max(1, Math.min(blockRows, BLOCK_BYTES / Double.BYTES / Math.max(1, cols))); // the block's fp64 deltas
        }
        double[] columnSumSq = null;
        if (job.needsColumnPass()) {
            double[] sumSq = new double[cols];
            double[] sumErr = new double[cols];
            forEachRun(job.rows(), ALL_ROWS, 0, blockRows, (r0, n) -> {
                try (TensorSource.Bytes src = planned.source().read(r0 * srcRowBytes, n * srcRowBytes)) {
                    CpuMerge.columnSums(job, r0, n, src.bytes(), sumSq, sumErr);
                }
            });
            job.finishColumnNorms(sumSq, sumErr);
            columnSumSq = sumSq;
        }
        FloatFormat fmt = FloatFormat.of(m.dtype());
        FloatFormat srcFmt = FloatFormat.of(planned.source().dtype());
        Fp32Bound bound = fp32 ? new Fp32Bound(job, fmt, columnSumSq) : null;
        double[] deltas = fp32 ? new double[blockRows * cols] : null;
        double[] baseRow = fp32 ? new double[cols] : null;
        double[] exactRow = fp32 ? new double[cols] : null;
        double[] tol = fp32 ? new double[cols] : null;
        int count = planned.isAdapted() ? sampleRows : ALL_ROWS;
        ByteBuffer expected = ByteBuffer.allocate((int) (Math.min(blockRows, Math.max(1, job.rows())) * outRowBytes)).order(ByteOrder.LITTLE_ENDIAN);
        Tally t = new Tally();
        if (fp32) {
            t.worstShare = 0;
        }
        long[] rowsChecked = {0};
        forEachRun(job.rows(), count, planned.name().hashCode(), blockRows, (r0, n) -> {
            int len = (int) (n * outRowBytes);
            try (TensorSource.Bytes s = planned.source().read(r0 * srcRowBytes, n * srcRowBytes); MappedRegion g = mf.map(m, r0 * outRowBytes, len)) {
                ByteBuffer src = s.bytes();
                ByteBuffer got = g.bytes();
                CpuMerge.mergeRows(job, r0, n, src, expected, new BlockStats(), deltas);
                rowsChecked[0] += n;
                if (!t.allEqualBase && expected.slice(0, len).equals(got.slice(0, len))) {
                    t.checked += (long) n * cols; // exact, and the change is known to be there
                    return;
                }
                if (bound == null) {
                    compare(fmt, srcFmt, expected, got, src, 0, (long) n * cols, null, null, t);
                    return;
                }
                for (int i = 0; i < n; i++) {
                    // each row's exact merged values (fp64) and the fp32-accumulation bound of each element
                    long r = r0 + i;
                    int from = i * cols;
                    int tokenOffset = job.tokenRowOffset(r);
                    for (int j = 0; j < cols; j++) {
                        baseRow[j] = srcFmt.decode(srcFmt.bitsAt(src, from + j));
                        exactRow[j] = tokenOffset >= 0 ? job.tokenValues()[tokenOffset + j] : baseRow[j] + deltas[from + j];
                    }
                    if (tokenOffset >= 0) {
                        for (int j = 0; j < cols; j++) {
                            tol[j] = fmt.ulp(Math.abs(exactRow[j]));
                        }
                    } else {
                        bound.row(r, baseRow, exactRow, tol);
                    }
                    compare(fmt, srcFmt, expected, got, src, from, cols, exactRow, tol, t);
                }
            }
        });
        boolean notApplied = planned.isAdapted() && t.anyChange && t.allEqualBase;
        return new TensorCheck(planned.name(), planned.kind(), (int) Math.min(rowsChecked[0], Integer.MAX_VALUE), t.checked, t.differing,
                t.worst, t.nonFinite, notApplied, null, t.worstShare);
    }

    /**
     * Elements [from, from + elements) of a block; with {@code exact} and {@code tol} (fp32-accumulation
     * mode, indexed from 0 at {@code from}) also each differing element's error as a share of its bound.
     */
    private static void compare(FloatFormat fmt, FloatFormat srcFmt, ByteBuffer expected, ByteBuffer got, ByteBuffer src, long from, long elements,
                                double[] exact, double[] tol, Tally t) {
        for (long k = 0; k < elements; k++) {
            long j = from + k;
            int eb = fmt.bitsAt(expected, j);
            int gb = fmt.bitsAt(got, j);
            double ev = fmt.decode(eb);
            double gv = fmt.decode(gb);
            double base = srcFmt.decode(srcFmt.bitsAt(src, j));
            t.checked++;
            if (fmt.isNonFinite(gb)) {
                if (!fmt.isNonFinite(eb)) {
                    t.nonFinite++;
                }
                continue;
            }
            if (ev != base) {
                t.anyChange = true;
            }
            if (gv != base) {
                t.allEqualBase = false;
            }
            if (eb != gb) {
                t.differing++;
                double ulp = Double.isFinite(ev) ? Math.abs(gv - ev) / fmt.ulp(ev) : Double.POSITIVE_INFINITY;
                t.worst = Math.max(t.worst, ulp);
                if (tol != null && Double.isFinite(base)) {
                    t.worstShare = Math.max(t.worstShare, Math.abs(gv - exact[(int) k]) / tol[(int) k]);
                }
            }
        }
    }

    /**
     * An NF4 group written by {@code merge --to nf4}: its quant state must be the planned one (same
     * blocksize, dtype, shape, nesting), and for sampled NF4 blocks the codes (and the absmax, when
     * stored plain) must be exactly those of the merged values rounded to the quant state's dtype,
     * recomputed here. Codes depend only on their own block's values, so blocks check one by one;
     * the double-quantized absmax depends on the whole weight and is checked for structure only.
     */
    private static TensorCheck checkRequantized(OutputTensor planned, Checkpoint merged, int sampleRows) throws IOException {
        OutputTensor.Kind kind = planned.kind();
        Nf4Tensor group;
        Nf4Decoder decoder;
        try {
            group = Nf4Tensor.open(merged, planned.name());
            decoder = group.decoder();
        } catch (QuantException e) {
            return new TensorCheck(planned.name(), kind, 0, 0, 0, 0, 0, false, "the NF4 group is not readable: " + e.getMessage());
        }
        QuantState want = ((Nf4Output) planned.quantizedOutput()).template();
        QuantState got = group.state();
        if (got.blocksize() != want.blocksize() || got.dtype() != want.dtype() || !Arrays.equals(got.shape(), want.shape())
                || got.isDoubleQuant() != want.isDoubleQuant()) {
            return new TensorCheck(planned.name(), kind, 0, 0, 0, 0, 0, false, "quant state " + got + " is not the planned " + want);
        }
        TensorJob job = TensorJob.prepare(planned);
        if (job.needsSelection()) {
            job.dense().selectAll(job.rows());
        }
        int cols = job.cols();
        int bs = got.blocksize();
        long n = got.numElements();
        FloatFormat fmt = FloatFormat.of(got.dtype());
        long srcRowBytes = (long) cols * fmt.sizeInBytes();
        byte[] codes = new byte[bs];
        float[] values = new float[bs];
        long[] tally = new long[3]; // blocks, elements checked, differing
        Nf4Tensor.Part w = group.weight();
        int most = (int) Math.max(1, BLOCK_BYTES / fmt.sizeInBytes() / bs);
        forEachRun(got.numBlocks(), sampleRows, planned.name().hashCode(), most, (b0, nb) -> {
            // the rows that hold blocks [b0, b0 + nb), merged once (a block may cross rows; blocks start on even elements)
            long first = b0 * bs;
            long end = Math.min(n, (b0 + nb) * bs);
            long row0 = first / cols;
            int rows = (int) ((end - 1) / cols - row0 + 1);
            ByteBuffer mergedRows = ByteBuffer.allocate((int) (rows * srcRowBytes)).order(ByteOrder.LITTLE_ENDIAN);
            try (TensorSource.Bytes src = planned.source().read(row0 * srcRowBytes, rows * srcRowBytes)) {
                CpuMerge.mergeRows(job, row0, rows, src.bytes(), mergedRows, new BlockStats(), null);
            }
            byte[] packed = new byte[(int) ((end - first + 1) / 2)];
            try (MappedRegion r = w.file().map(w.info(), first / 2, packed.length)) {
                r.bytes().get(packed);
            }
            float[] stored = got.isDoubleQuant() ? null : decoder.absmax(b0, nb);
            for (int k = 0; k < nb; k++) {
                long blockFirst = first + (long) k * bs;
                int len = (int) Math.min(bs, n - blockFirst);
                long offset = blockFirst - row0 * cols;
                for (int i = 0; i < len; i++) {
                    values[i] = (float) fmt.decode(fmt.bitsAt(mergedRows, offset + i));
                }
                float absmax = Nf4Codec.quantizeBlock(got.code(), values, 0, len, codes, 0);
                tally[0]++;
                for (int i = 0; i < len; i++) {
                    long at = blockFirst - first + i;
                    tally[1]++;
                    if (Nf4Codec.codeAt(packed[(int) (at / 2)], at) != codes[i]) {
                        tally[2]++;
                    }
                }
                if (stored != null && stored[k] != absmax) {
                    tally[2]++;
                }
            }
        });
        long checked = tally[1];
        long differing = tally[2];
        return new TensorCheck(planned.name(), kind, (int) Math.min(tally[0], Integer.MAX_VALUE), checked, differing, 0, 0, false,
                differing == 0 ? null : differing + " of " + checked + " checked 4-bit codes (or block absmax) differ from the requantized merge");
    }

    /**
     * A requantized group of a format whose scales cover whole ranges of rows (FP8): every range is
     * merged and requantized again with the format's own requantizer, and its codes and, at the end,
     * every other tensor of the group must equal what was written, byte for byte.
     */
    private static TensorCheck checkRequantizedByReplay(OutputTensor planned, Checkpoint merged) throws IOException {
        OutputTensor.Kind kind = planned.kind();
        List<SafetensorsWriter.Entry> entries = planned.quantizedOutput().entries(planned.name());
        for (SafetensorsWriter.Entry e : entries) {
            TensorInfo t = merged.tensor(e.name());
            if (t == null || t.dtype() != e.dtype() || !Arrays.equals(t.shape(), e.shape())) {
                return new TensorCheck(planned.name(), kind, 0, 0, 0, 0, 0, false, e.name() + " is "
                        + (t == null ? "missing" : t.dtype() + TensorInfo.shapeString(t.shape())) + ", planned " + e.dtype()
                        + TensorInfo.shapeString(e.shape()));
            }
        }
        Requantizer r = planned.quantizedOutput().requantizer(planned.source().quantized());
        TensorJob job = TensorJob.prepare(planned);
        if (job.needsSelection()) {
            job.dense().selectAll(job.rows()); // a combination's top-D cut depends on the whole tensor
        }
        int cols = job.cols();
        long n = planned.numElements();
        FloatFormat fmt = FloatFormat.of(planned.dtype());
        TensorInfo codesInfo = merged.tensor(planned.name());
        SafetensorsFile codesFile = merged.fileOf(planned.name());
        long checked = 0;
        long differing = 0;
        try {
            for (long first = 0; first < n; first += r.blockElements()) {
                int count = (int) Math.min(r.blockElements(), n - first);
                long row0 = first / cols;
                int rows = count / cols;
                long rowBytes = (long) cols * fmt.sizeInBytes();
                ByteBuffer x = ByteBuffer.allocate((int) (rows * rowBytes)).order(ByteOrder.LITTLE_ENDIAN);
                double[] delta = new double[count];
                try (TensorSource.Bytes src = planned.source().read(row0 * rowBytes, rows * rowBytes)) {
                    CpuMerge.mergeRows(job, row0, rows, src.bytes(), x, new BlockStats(), delta);
                    r.encode(first, count, x, src.bytes(), delta);
                }
                ByteBuffer want = r.codes(first, count);
                ByteBuffer got;
                try (MappedRegion m = codesFile.map(codesInfo, first * codesInfo.dtype().bits() / 8, want.remaining())) {
                    got = m.bytes();
                    for (int i = 0; i < want.remaining(); i++) {
                        checked++;
                        differing += got.get(i) != want.get(want.position() + i) ? 1 : 0;
                    }
                }
            }
            r.finish();
            List<ByteBuffer> tail = r.tail();
            for (int k = 0; k < tail.size(); k++) {
                TensorInfo t = merged.tensor(entries.get(k + 1).name());
                ByteBuffer got = merged.fileOf(t.name()).readAll(t);
                ByteBuffer want = tail.get(k).duplicate();
                if (!got.equals(want)) {
                    differing++;
                }
            }
        } catch (QuantException e) {
            return new TensorCheck(planned.name(), kind, 0, checked, differing, 0, 0, false, "cannot be requantized again: " + e.getMessage());
        }
        return new TensorCheck(planned.name(), kind, (int) Math.min(Integer.MAX_VALUE, n / cols), checked, differing, 0, 0, false,
                differing == 0 ? null : differing + " of " + checked + " checked codes (or the scales) differ from the requantized merge");
    }
}
