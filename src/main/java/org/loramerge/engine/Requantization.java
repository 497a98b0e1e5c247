package org.loramerge.engine;

import java.nio.ByteBuffer;
import java.util.List;
import java.util.concurrent.Callable;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.Requantizer;

/**
 * The merge and requantization of one quantized output weight on a backend
 * ({@code merge --to nf4}), from {@link Backend#openRequantization} to {@link #close}. Every
 * backend writes the bytes of the CPU path, which merges with the CPU engine and requantizes with
 * the output format's {@link Requantizer}.
 */
public interface Requantization extends AutoCloseable {
    /** Which bytes of the source {@link #mergeRows} takes. */
    TensorSource.Form input();

    /** Elements per quantization block: a row range must start on a multiple of it. */
    int blockElements();

    /** Working memory per element of a row block, by which the pipeline sizes its blocks. */
    int workingBytesPerElement();

    /** Where, in the codes tensor, the codes {@link #mergeRows} returns for a range from {@code firstElement} start. */
    long codesOffset(long firstElement);

    /**
     * Merges rows {@code [row0, row0 + rowCount)} (they cover whole quantization blocks, or run to
     * the end of the weight) and requantizes them; {@code src} holds those rows of the source in
     * the {@link #input} form. Returns the output codes of the rows, to be written in order, or none
     * when the codes wait for the whole weight (one scale for the whole tensor; they come with
     * {@link #finish}). May be called from several threads at once, for disjoint rows.
     */
    ByteBuffer mergeRows(long row0, int rowCount, ByteBuffer src, BlockStats stats) throws Exception;

    /** After the last row: the group's scales, and the survival measure. */
    Result finish() throws Exception;

    @Override
    void close();

    /**
     * A finished weight.
     *
     * @param codes    the codes {@link #mergeRows} held back, from the weight's first element (written at
     *                 {@code codesOffset(0)}); empty when it returned them all
     * @param tail     the bytes of the group's tensors after the codes, in layout order
     * @param measures the survival sums by chunk, to be added in order (each may run on any thread)
     */
    record Result(ByteBuffer codes, List<ByteBuffer> tail, List<Callable<Requantizer.Change>> measures) {
        /** A weight whose codes {@link #mergeRows} returned. */
        public Result(List<ByteBuffer> tail, List<Callable<Requantizer.Change>> measures) {
            this(ByteBuffer.allocate(0), tail, measures);
        }
    }
}
