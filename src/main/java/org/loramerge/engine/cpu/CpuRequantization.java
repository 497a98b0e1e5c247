package org.loramerge.engine.cpu;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.Requantizer;

/**
 * A requantized output on the CPU, the reference: each row block is merged by {@link CpuMerge},
 * rounded once to the weight's dtype, with each element's ΔW recorded, and requantized on the spot
 * by the output format's {@link Requantizer}. A block's base values, merged values and ΔW (8 bytes
 * an element, which sizes the blocks) are its own heap buffers, dropped with the block; the codes
 * live in the requantizer until the weight is done.
 */
public final class CpuRequantization implements Requantization {
    private final TensorJob job;
    private final Requantizer requantizer;

    public CpuRequantization(TensorJob job) {
        this.job = job;
        this.requantizer = job.out().quantizedOutput().requantizer(job.out().source().quantized());
    }

    @Override
    public TensorSource.Form input() {
        return TensorSource.Form.VALUES;
    }

    @Override
    public int blockElements() {
        return requantizer.blockElements();
    }

    @Override
    public int workingBytesPerElement() {
        return Double.BYTES; // the block's ΔW
    }

    @Override
    public long codesOffset(long firstElement) {
        return requantizer.codesOffset(firstElement);
    }

    @Override
    public ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws QuantException {
        long cols = job.cols();
        int count = Math.toIntExact(rowCount * cols);
        ByteBuffer merged = ByteBuffer.allocate(count * job.out().dtype().sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        double[] delta = new double[count];
        CpuMerge.mergeRows(job, row0, rowCount, src, merged, stats, delta);
        requantizer.encode(row0 * cols, count, merged, src, delta);
        return requantizer.codes(row0 * cols, count);
    }

    @Override
    public Result finish() throws QuantException {
        requantizer.finish();
        List<Callable<Requantizer.Change>> measures = new ArrayList<>();
        for (int c = 0; c < requantizer.chunks(); c++) {
            int chunk = c;
            measures.add(() -> requantizer.measure(chunk));
        }
        return new Result(requantizer.tail(), measures);
    }

    @Override
    public void close() {
    }
}
