package org.loramerge.verify;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
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

/**
 * Checks a merged checkpoint against base + adapter: every tensor present with the planned shape,
 * unchanged tensors byte-equal, and for a sample of rows of every adapted tensor, the worst error
 * in units in the last place against the correctly rounded exact merge, NaN/Inf counts, and
 * whether the adapter's change is there at all.
 */
public final class Verifier {
    /** One tensor's findings. */
    public record TensorCheck(String name, OutputTensor.Kind kind, int rowsChecked, long elementsChecked, long elementsDiffering,
                              double worstUlp, long nonFinite, boolean notApplied, String problem) {
    }

    /** All findings. */
    public record Result(List<TensorCheck> tensors, List<String> problems, double worstUlp) {
        public boolean passed() {
            return problems.isEmpty();
        }
    }

    private Verifier() {
    }

    public static Result verify(MergePlan plan, Checkpoint merged, int sampleRows, double maxUlp) throws IOException {
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
                TensorCheck c = checkRequantized(planned, merged, sampleRows);
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
            TensorCheck c = floating ? checkValues(planned, m, merged.fileOf(m.name()), sampleRows)
                    : checkBytes(planned, m, merged.fileOf(m.name()), sampleRows);
            checks.add(c);
            worst = Math.max(worst, c.worstUlp());
            if (c.problem() != null) {
                problems.add(planned.name() + ": " + c.problem());
            } else if (c.worstUlp() > maxUlp) {
                problems.add(planned.name() + ": worst error " + c.worstUlp() + " ulp exceeds " + maxUlp);
            } else if (c.nonFinite() > 0) {
                problems.add(planned.name() + ": " + c.nonFinite() + " NaN/Inf values in the sampled rows");
            } else if (c.notApplied()) {
                problems.add(planned.name() + ": the adapter's change is not there (the sampled rows equal the base)");
            }
        }
        for (String name : merged.tensors().keySet()) {
            if (!plannedNames.contains(name)) {
                problems.add("the merged model has tensor " + name + ", which base + adapter do not produce");
            }
        }
        return new Result(checks, problems, worst);
    }

    static long[] sampleRows(long rows, int count, long seed) {
        TreeSet<Long> set = new TreeSet<>();
        if (rows == 0) {
            return new long[0];
        }
        set.add(0L);
        set.add(rows - 1);
        Random rnd = new Random(seed);
        while (set.size() < Math.min(rows, count)) {
            set.add((long) (rnd.nextDouble() * rows));
        }
        return set.stream().mapToLong(Long::longValue).toArray();
    }

    private static TensorCheck checkBytes(OutputTensor planned, TensorInfo m, SafetensorsFile mf, int sampleRows) throws IOException {
        boolean same = m.sizeInBytes() == planned.sizeInBytes();
        long window = 64L << 20;
        for (long off = 0; same && off < m.sizeInBytes(); off += window) {
            long n = Math.min(window, m.sizeInBytes() - off);
            try (MappedRegion a = planned.source().file().map(planned.source().info(), off, n); MappedRegion b = mf.map(m, off, n)) {
                same = a.bytes().equals(b.bytes());
            }
        }
        return new TensorCheck(planned.name(), planned.kind(), 0, m.numElements(), same ? 0 : m.numElements(), 0, 0, false,
                same ? null : "bytes differ from the base");
    }

    private static TensorCheck checkValues(OutputTensor planned, TensorInfo m, SafetensorsFile mf, int sampleRows) throws IOException {
        TensorJob job = TensorJob.prepare(planned.withDtype(m.dtype()));
        if (job.needsSelection()) {
            job.dense().selectAll(job.rows()); // a combination's top-D cut depends on the whole tensor
        }
        int cols = job.cols();
        long srcRowBytes = (long) cols * planned.source().dtype().sizeInBytes();
        long outRowBytes = (long) cols * m.dtype().sizeInBytes();
        if (job.needsColumnPass()) {
            double[] sumSq = new double[cols];
            double[] sumErr = new double[cols];
            for (long r = 0; r < job.rows(); r++) {
                try (TensorSource.Bytes src = planned.source().read(r * srcRowBytes, srcRowBytes)) {
                    CpuMerge.columnSums(job, r, 1, src.bytes(), sumSq, sumErr);
                }
            }
            job.finishColumnNorms(sumSq, sumErr);
        }
        FloatFormat fmt = FloatFormat.of(m.dtype());
        FloatFormat srcFmt = FloatFormat.of(planned.source().dtype());
        long[] rows = sampleRows(job.rows(), planned.isAdapted() ? sampleRows : Math.min(sampleRows, 4), planned.name().hashCode());
        long checked = 0;
        long differing = 0;
        long nonFinite = 0;
        double worst = 0;
        boolean anyChange = false;
        boolean allEqualBase = true;
        ByteBuffer expected = ByteBuffer.allocate((int) outRowBytes).order(ByteOrder.LITTLE_ENDIAN);
        for (long r : rows) {
            ByteBuffer src;
            try (TensorSource.Bytes b = planned.source().read(r * srcRowBytes, srcRowBytes)) {
                src = ByteBuffer.allocate((int) srcRowBytes).order(ByteOrder.LITTLE_ENDIAN).put(b.bytes());
            }
            ByteBuffer got = ByteBuffer.wrap(read(mf, m, r * outRowBytes, outRowBytes)).order(ByteOrder.LITTLE_ENDIAN);
            CpuMerge.mergeRows(job, r, 1, src, expected, new BlockStats(), null);
            for (int j = 0; j < cols; j++) {
                int eb = fmt.bitsAt(expected, j);
                int gb = fmt.bitsAt(got, j);
                double ev = fmt.decode(eb);
                double gv = fmt.decode(gb);
                double base = srcFmt.decode(srcFmt.bitsAt(src, j));
                checked++;
                if (fmt.isNonFinite(gb)) {
                    if (!fmt.isNonFinite(eb)) {
                        nonFinite++;
                    }
                    continue;
                }
                if (ev != base) {
                    anyChange = true;
                }
                if (gv != base) {
                    allEqualBase = false;
                }
                if (eb != gb) {
                    differing++;
                    double ulp = Double.isFinite(ev) ? Math.abs(gv - ev) / fmt.ulp(ev) : Double.POSITIVE_INFINITY;
                    worst = Math.max(worst, ulp);
                }
            }
        }
        boolean notApplied = planned.isAdapted() && anyChange && allEqualBase;
        return new TensorCheck(planned.name(), planned.kind(), rows.length, checked, differing, worst, nonFinite, notApplied, null);
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
        long[] blocks = sampleRows(got.numBlocks(), sampleRows, planned.name().hashCode());
        byte[] codes = new byte[bs];
        float[] values = new float[bs];
        long checked = 0;
        long differing = 0;
        for (long b : blocks) {
            long first = b * bs;
            int len = (int) Math.min(bs, n - first);
            long row0 = first / cols;
            int rows = (int) ((first + len - 1) / cols - row0 + 1);
            ByteBuffer mergedRows = ByteBuffer.allocate((int) (rows * srcRowBytes)).order(ByteOrder.LITTLE_ENDIAN);
            try (TensorSource.Bytes src = planned.source().read(row0 * srcRowBytes, rows * srcRowBytes)) {
                CpuMerge.mergeRows(job, row0, rows, src.bytes(), mergedRows, new BlockStats(), null);
            }
            long offset = first - row0 * cols;
            for (int i = 0; i < len; i++) {
                values[i] = (float) fmt.decode(fmt.bitsAt(mergedRows, offset + i));
            }
            float absmax = Nf4Codec.quantizeBlock(values, 0, len, codes, 0);
            Nf4Tensor.Part w = group.weight();
            byte[] packed = new byte[(len + 1) / 2];
            try (MappedRegion r = w.file().map(w.info(), first / 2, packed.length)) {
                r.bytes().get(packed);
            }
            for (int i = 0; i < len; i++) {
                checked++;
                if (Nf4Codec.codeAt(packed[i / 2], i) != codes[i]) {
                    differing++;
                }
            }
            if (!got.isDoubleQuant() && decoder.absmax(b, 1)[0] != absmax) {
                differing++;
            }
        }
        return new TensorCheck(planned.name(), kind, blocks.length, checked, differing, 0, 0, false,
                differing == 0 ? null : differing + " of " + checked + " sampled 4-bit codes (or block absmax) differ from the requantized merge");
    }

    private static byte[] read(SafetensorsFile f, TensorInfo t, long offset, long length) throws IOException {
        byte[] out = new byte[Math.toIntExact(length)];
        long done = 0;
        while (done < length) {
            long n = Math.min(MappedRegion.MAX_WINDOW, length - done);
            try (MappedRegion r = f.map(t, offset + done, n)) {
                r.bytes().get(out, (int) done, (int) n);
            }
            done += n;
        }
        return out;
    }
}
