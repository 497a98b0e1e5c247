package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuMerge;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.Nf4Weight;

/**
 * A dense output tensor on the GPU (one low-rank term, W in the output dtype, or an NF4 weight
 * dequantized on the device). Per block: W goes up (as it is, or as packed codes), P = s·U·Vᵀ,
 * the fused add-and-round and the exact settling of the elements at a rounding boundary run on
 * the worker's stream, and the block comes back into the pipeline's page-locked buffer; the rare
 * element the device could not settle exactly is settled on the host.
 */
final class CudaTensorMerge implements TensorMerge {
    private final CudaBackend backend;
    private final CudaDevice device;
    private final TensorJob job;
    private final DeviceFactors factors;
    /** For an NF4 source: the decoded absmax of every block of the weight. */
    private final DeviceMemory sourceAbsmax;
    private final Nf4Weight nf4;
    private boolean closed;

    CudaTensorMerge(CudaBackend backend, CudaDevice device, TensorJob job) throws IOException {
        this.backend = backend;
        this.device = device;
        this.job = job;
        device.bindContext();
        this.nf4 = deviceNf4(job);
        DeviceFactors f = new DeviceFactors(job.terms().get(0), device.pool());
        DeviceMemory absmax = null;
        if (nf4 != null) {
            try (CudaStream s = new CudaStream()) {
                absmax = device.nf4().decodedAbsmax(device.pool(), s, nf4.decoder());
            } catch (RuntimeException | IOException e) {
                f.close();
                throw e;
            }
        }
        this.factors = f;
        this.sourceAbsmax = absmax;
    }

    /** The source when it is an NF4 weight, which the device dequantizes itself (an FP4 one goes up dequantized), else null. */
    static Nf4Weight deviceNf4(TensorJob job) {
        return job.out().source().quantized() instanceof Nf4Weight && ((Nf4Weight) job.out().source().quantized()).kind().equals("nf4")
                ? (Nf4Weight) job.out().source().quantized() : null;
    }

    /** The factors on the device, for a requantization that shares this tensor's upload. */
    DeviceFactors factors() {
        return factors;
    }

    /** The NF4 source's decoded absmax on the device, or null for a dense source. */
    DeviceMemory sourceAbsmax() {
        return sourceAbsmax;
    }

    @Override
    public TensorSource.Form input() {
        return nf4 != null ? TensorSource.Form.STORED : TensorSource.Form.VALUES;
    }

    @Override
    public void columnSums(long row0, int rowCount, ByteBuffer values, double[] sumSq, double[] sumErr) {
        CpuMerge.columnSums(job, row0, rowCount, values, sumSq, sumErr); // DoRA tensors run on the CPU; never reached
    }

    /** Queues W of rows [row0, row0 + rowCount) into the worker's input buffer. */
    void load(DeviceWorker w, long row0, int rowCount, ByteBuffer src) {
        long n = (long) rowCount * job.cols();
        if (nf4 != null) {
            w.loadNf4(src, row0 * job.cols(), n, sourceAbsmax, nf4.tensor().blocksize(), job.srcFormat());
        } else {
            w.loadValues(src, n * job.srcFormat().sizeInBytes());
        }
    }

    @Override
    public void mergeRows(long row0, int rowCount, ByteBuffer src, ByteBuffer dst, BlockStats stats) {
        DeviceWorker w = device.worker();
        FloatFormat fmt = job.dstFormat();
        int cols = job.cols();
        long bytes = (long) rowCount * cols * fmt.sizeInBytes();
        load(w, row0, rowCount, src);
        w.mergeRoundExactly(factors, fmt, row0, rowCount, cols, job.boundK());
        // dst is page-locked when the pipeline took it from allocateBlockBuffer, so this copy is asynchronous and direct
        w.copyOutputTo(dst, bytes);
        DeviceWorker.Counts counted = w.counters();
        if (nf4 != null && (counted.forHost() > 0 || counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY)) {
            src = w.download(w.input(), bytes); // the host work below reads W: the dequantized values, not the packed codes
        }
        if (counted.ambiguous() > DeviceWorker.AMBIGUOUS_CAPACITY) {
            // pathological input: let the CPU engine decide the whole block
            src.position(0);
            CpuMerge.mergeRows(job, row0, rowCount, src, dst, stats, null);
            return;
        }
        stats.addExactlyRounded(counted.ambiguous() - counted.forHost());
        long overflows = counted.overflows();
        dst.position(0);
        if (counted.forHost() > 0) {
            ByteBuffer idx = w.forHostElements(counted.forHost());
            ByteBuffer out = dst;
            overflows += HostSettle.settle(job, row0, src, idx, (int) counted.forHost(), (e, b) -> fmt.putBits(out, e, b), stats);
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
        factors.close();
        if (sourceAbsmax != null) {
            sourceAbsmax.close();
        }
        backend.forget(this);
    }
}
