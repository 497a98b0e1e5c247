package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.LowRankTerm;
import org.loramerge.engine.Stages;
import org.loramerge.engine.Stages.Stage;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.QuantizedWeight;

/**
 * A dense output tensor on the GPU (its low-rank terms, W in its own dtype or a quantized weight
 * dequantized on the device, {@link DeviceDequantizer}, the output in the same dtype or another).
 * Per block: W goes up (as it is, or as its stored codes), P = s·U·Vᵀ, the fused add-and-round
 * and the exact settling of the elements at a rounding boundary run on the worker's stream, and
 * the block comes back into the pipeline's page-locked buffer; the rare element the device could
 * not settle exactly is settled on the host. DoRA with row norms runs its own kernel, whose undecided elements all go to the host
 * (decimal arithmetic: a square root has no short exact form).
 *
 * <p>The terms fall into segments of rows ({@link #segments}): terms on the same rows (several
 * adapters combined by cat or task_arithmetic) go up as one, folded ({@link DeviceFactors#of}),
 * and terms on disjoint rows (an MoE expert stack's one per expert) are separate segments; a block
 * that spans segments is computed in one part per segment. A folded segment's undecided elements
 * all go to the host, which settles them from the job's own terms.
 */
final class CudaTensorMerge implements TensorMerge {
    private final CudaBackend backend;
    private final CudaDevice device;
    private final TensorJob job;
    /** The terms by segment of rows, in row order ({@link #segments}). */
    private final List<List<LowRankTerm>> segments;
    /** One per segment: its terms' factors, folded when there are several. */
    private final List<DeviceFactors> factors;
    /** For a quantized source dequantized on the device: its kernels and what they need of the whole weight; else null. */
    private final DeviceDequantizer source;
    /** For DoRA (one norm per row, one term): m of every row. */
    private final DeviceMemory magnitude;
    private boolean closed;

    CudaTensorMerge(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        this(backend, device, job, Taken::settleLegacyStream);
    }

    /**
     * The tensor's factors, its dequantizer and DoRA's magnitudes on the device, then {@code
     * settleUploads}, the wait for those uploads (the tests make it fail). On any failure everything
     * already taken goes back ({@link Taken}) and the failure is thrown.
     */
    CudaTensorMerge(CudaBackend backend, CudaDevice device, TensorJob job, Runnable settleUploads) throws IOException {
        this.backend = backend;
        this.device = device;
        this.job = job;
        device.bindContext();
        this.segments = job.terms().isEmpty() ? List.of(List.of(zeroTerm(job))) : segments(job.terms(), job.rows());
        if (segments == null) {
            throw new IllegalArgumentException(job.out().name() + ": the terms' rows do not split into segments (CudaBackend.onGpu)");
        }
        List<DeviceFactors> up = new ArrayList<>();
        DeviceDequantizer dequantizer = null;
        DeviceMemory m = null;
        Taken taken = new Taken(settleUploads);
        try {
            for (List<LowRankTerm> segment : segments) {
                up.add(taken.add(DeviceFactors.of(segment, device.pool())));
            }
            QuantizedWeight q = job.out().source().quantized();
            if (q != null) {
                dequantizer = taken.add(DeviceDequantizer.of(device, q, job.rows(), job.cols(), device.blockBytes()));
            }
            if (job.doraAxis() != null) {
                m = taken.add(DeviceFactors.upload(device.pool(), job.magnitude()));
            }
            // every upload above has landed (DeviceMemory#upload); this wait reports a device fault raised meanwhile here,
            // before any worker reads the buffers
            settleUploads.run();
        } catch (RuntimeException | IOException | Error e) {
            taken.giveBack(e);
            throw e;
        }
        this.factors = up;
        this.source = dequantizer;
        this.magnitude = m;
    }

    /**
     * A term of zeros on every row: the one segment of a weight without terms that a requantization
     * takes on the device (a GPTQ or AWQ weight the adapter leaves alone, quantized to NF4), whose
     * merge is then X = round(W + 0) = W with W's non-finite values counted as in any merge.
     */
    private static LowRankTerm zeroTerm(TensorJob job) {
        int rows = Math.toIntExact(job.rows());
        return new LowRankTerm(job.out().name(), 1.0, 1, rows, job.cols(), new double[rows], new double[job.cols()]);
    }

    /**
     * The factors on the device of a tensor whose terms all cover every row (one segment), for a
     * requantization that shares this tensor's upload.
     */
    DeviceFactors factors() {
        if (factors.size() != 1) {
            throw new IllegalStateException(job.out().name() + " has " + factors.size() + " row segments; a requantization on the device takes one");
        }
        return factors.get(0);
    }

    /**
     * The terms grouped by the rows they cover, in row order: terms on the same rows form one
     * segment (several adapters' terms, to be folded into one), and the segments must follow each
     * other from row 0 to the last row without a gap or an overlap (an expert stack's one per
     * expert, or one segment on every row). Null when they do not: two terms that partly overlap,
     * or rows no term covers.
     */
    static List<List<LowRankTerm>> segments(List<LowRankTerm> terms, long rows) {
        List<LowRankTerm> sorted = new ArrayList<>(terms);
        sorted.sort(Comparator.comparingLong(LowRankTerm::row0)); // stable: the job's order within a segment
        List<List<LowRankTerm>> out = new ArrayList<>();
        long next = 0;
        for (LowRankTerm t : sorted) {
            List<LowRankTerm> last = out.isEmpty() ? null : out.get(out.size() - 1);
            if (last != null && last.get(0).row0() == t.row0() && last.get(0).rows() == t.rows()) {
                last.add(t);
                continue;
            }
            if (t.row0() != next) {
                return null;
            }
            List<LowRankTerm> segment = new ArrayList<>();
            segment.add(t);
            out.add(segment);
            next += t.rows();
        }
        return out.isEmpty() || next != rows ? null : out;
    }

    @Override
    public TensorSource.Form input() {
        return source != null ? TensorSource.Form.STORED : TensorSource.Form.VALUES;
    }

    @Override
    public void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, values, sumSq, sumErr); // column-norm DoRA runs on the CPU; never reached
    }

    @Override
    public void countSelection(long row0, int rowCount) {
        job.dense().countRows(row0, rowCount); // dense combinations run on the CPU engine; never reached
    }

    /** Queues W of rows [row0, row0 + rowCount) into the worker's input buffer; returns the bytes that go up. */
    long load(DeviceWorker w, long row0, int rowCount, ByteBuffer src) {
        return load(w, row0, rowCount, src, null);
    }

    /** {@link #load}; a dense {@code block} shared with other merges of one pass goes up once ({@link DeviceWorker#loadValuesOnce}). */
    private long load(DeviceWorker w, long row0, int rowCount, ByteBuffer src, Object block) {
        long n = (long) rowCount * job.cols();
        if (source != null) {
            return w.loadStored(source, src, row0, rowCount);
        } else if (block == null && backend.isBlockBuffer(src)) {
            // read into page-locked memory by the pipeline: no staging copy; merge waits for the stream before it returns src
            w.loadPinned(src, n * job.srcFormat().sizeInBytes());
        } else {
            w.loadValuesOnce(src, n * job.srcFormat().sizeInBytes(), block);
        }
        return n * job.srcFormat().sizeInBytes();
    }

    @Override
    public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        merge(row0, rowCount, src, null, dst, stats);
    }

    @Override
    public void mergeRowsOfSharedBlock(long row0, int rowCount, ByteBuffer src, Object block, ByteBuffer dst, BlockStats stats) {
        merge(row0, rowCount, src, block, dst, stats);
    }

    /**
     * One block: W staged and uploaded, then per segment of rows its kernels, the download and the
     * host's part. The time of each part goes to the merge's {@link Stages} (host time, and the
     * device time between CUDA events recorded on the worker's stream).
     */
    private void merge(long row0, int rowCount, ByteBuffer src, Object block, ByteBuffer dst, BlockStats stats) {
        DeviceWorker w = device.worker();
        FloatFormat in = job.srcFormat();
        FloatFormat out = job.dstFormat();
        int cols = job.cols();
        Stages stages = stats.stages();
        long staging = System.nanoTime();
        w.mark(DeviceWorker.MARK_LOAD_START);
        long upBytes = load(w, row0, rowCount, src, block);
        w.mark(DeviceWorker.MARK_LOADED);
        stages.since(Stage.STAGE_IN, staging, upBytes);
        boolean uploadTimed = false;
        ByteBuffer values = src; // W in its own dtype, for work on the host; a quantized block's is downloaded when needed
        long end = row0 + rowCount;
        int t = segmentAt(row0);
        for (long r = row0; r < end; t++) {
            LowRankTerm lead = segments.get(t).get(0);
            DeviceFactors f = factors.get(t);
            int n = (int) (Math.min(end, lead.row0() + lead.rows()) - r);
            long first = (r - row0) * cols;
            long bytes = (long) n * cols * out.sizeInBytes();
            w.mark(DeviceWorker.MARK_PART_START);
            if (magnitude != null) {
                w.mergeRoundDora(f, in, out, r - lead.row0(), n, cols, job.boundK(), magnitude);
            } else {
                w.mergeRoundExactly(f, in, out, r - lead.row0(), n, cols, job.boundK(), first);
            }
            w.mark(DeviceWorker.MARK_COMPUTED);
            // dst is page-locked when the pipeline took it from allocateBlockBuffer, so this copy is asynchronous and direct
            w.copyOutputTo(dst, first * out.sizeInBytes(), bytes);
            w.mark(DeviceWorker.MARK_DOWNLOADED);
            long waiting = System.nanoTime();
            DeviceWorker.Counts counted = w.counters();
            long settling = stages.since(Stage.DEVICE_WAIT, waiting, 0);
            if (stages.enabled()) {
                if (!uploadTimed) {
                    stages.add(Stage.UPLOAD, w.elapsedNanos(DeviceWorker.MARK_LOAD_START, DeviceWorker.MARK_LOADED), upBytes);
                    uploadTimed = true;
                }
                stages.add(Stage.COMPUTE, w.elapsedNanos(DeviceWorker.MARK_PART_START, DeviceWorker.MARK_COMPUTED), (long) n * cols * in.sizeInBytes());
                stages.add(Stage.DOWNLOAD, w.elapsedNanos(DeviceWorker.MARK_COMPUTED, DeviceWorker.MARK_DOWNLOADED), bytes);
            }
            // DoRA's undecided elements all go to the host, and so do a folded segment's; the others only when the
            // device's exact settling left them
            long forHost = magnitude != null ? counted.ambiguous() : DeviceWorker.forHost(f, counted);
            if (source != null && values == src && (forHost > 0 || counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY)) {
                // the host work below reads W: the dequantized values, not the stored codes
                values = w.download(w.input(), (long) rowCount * cols * in.sizeInBytes());
            }
            settleOnHost(w, f, r, n, counted, forHost, values, first * in.sizeInBytes(), dst, first * out.sizeInBytes(), stats);
            stages.since(Stage.HOST_SETTLE, settling, 0);
            r += n;
        }
    }

    /** The part of a block's bytes that one segment's rows take, little-endian from its index 0. */
    private static ByteBuffer slice(ByteBuffer b, long offset, long bytes) {
        return b.duplicate().clear().position(Math.toIntExact(offset)).limit(Math.toIntExact(offset + bytes)).slice().order(ByteOrder.LITTLE_ENDIAN);
    }

    /** The index of the segment whose rows hold {@code row}. */
    private int segmentAt(long row) {
        for (int i = 0; i < segments.size(); i++) {
            if (segments.get(i).get(0).localRow(row) >= 0) {
                return i;
            }
        }
        throw new IllegalStateException(job.out().name() + ": no term covers row " + row);
    }

    /**
     * Rows [row0, row0 + rowCount), merged with {@code f}, came back in {@code dst} at {@code dstOffset}:
     * decides on the host the {@code forHost} elements the device left to it, from W at
     * {@code srcOffset} of {@code values}.
     */
    private void settleOnHost(DeviceWorker w, DeviceFactors f, long row0, int rowCount, DeviceWorker.Counts counted, long forHost, ByteBuffer values,
                              long srcOffset, ByteBuffer dst, long dstOffset, BlockStats stats) {
        long elements = (long) rowCount * job.cols();
        ByteBuffer dstRows = slice(dst, dstOffset, elements * job.dstFormat().sizeInBytes());
        // W's rows are sliced only where the host reads them: a quantized block's values are its stored codes
        // until merge downloads the dequantized ones, which it does only for the two cases below
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY) {
            // pathological input: let the CPU engine decide these rows
            CpuMerge.mergeRows(job, row0, rowCount, slice(values, srcOffset, elements * job.srcFormat().sizeInBytes()), dstRows, stats, null);
            return;
        }
        stats.addExactlyRounded(counted.ambiguous() - forHost);
        long overflows = counted.overflows();
        if (forHost > 0) {
            FloatFormat fmt = job.dstFormat();
            ByteBuffer idx = magnitude != null ? w.ambiguousElements(forHost) : w.forHostElements(f, forHost);
            ByteBuffer srcRows = slice(values, srcOffset, elements * job.srcFormat().sizeInBytes());
            overflows += HostSettle.settle(job, row0, srcRows, idx, (int) forHost, (e, b) -> fmt.putBits(dstRows, e, b), stats);
        }
        stats.add(0, overflows, counted.nans());
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        device.bindContext();
        factors.forEach(DeviceFactors::close);
        if (source != null) {
            source.close();
        }
        if (magnitude != null) {
            magnitude.close();
        }
        backend.forget(this);
    }
}
