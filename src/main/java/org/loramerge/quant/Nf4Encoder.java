package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import org.loramerge.format.FloatFormat;

import static org.loramerge.quant.QuantException.Reason.NON_FINITE;

/**
 * Quantizes one weight to NF4 as a stream: values arrive in flattened row-major order in chunks
 * of any size (row blocks of a merge, windows of a file), the packed codes leave through a
 * {@link PackedSink} as soon as each block is complete, and only the per-block absmax values
 * (one float per {@code blocksize} elements) are kept until {@link #finish}. The result is
 * bit-identical to scripts/fixtures/nf4_reference.py and to {@link Nf4Codec#quantizeBlock} applied block by
 * block.
 *
 * <p>For double quantization pass {@link #finish}'s absmax to {@link DoubleQuant#quantize}.
 */
public final class Nf4Encoder {
    /** Receives packed code bytes in order; the buffer is reused after the call returns. */
    @FunctionalInterface
    public interface PackedSink {
        void write(ByteBuffer packed) throws IOException;
    }

    private static final int OUT_BUFFER_BYTES = 1 << 16;

    private final FourBitCode book;
    private final long numElements;
    private final int blocksize;
    private final PackedSink sink;
    private final Path path;
    private final String tensorName;
    private final float[] block;
    private final byte[] codes;
    private final float[] absmax;
    private final byte[] out;
    private int outPos;
    private int filled;
    private int blockIndex;
    private long consumed;
    private double maxErrorOverAbsmax;
    private boolean finished;

    /**
     * @param path       the file the weight comes from, for messages (may be null)
     * @param tensorName the weight's name, for messages
     */
    public Nf4Encoder(long numElements, int blocksize, PackedSink sink, Path path, String tensorName) {
        this(FourBitCode.NF4, numElements, blocksize, sink, path, tensorName);
    }

    /** An encoder into code book {@code book} (NF4 or FP4). */
    public Nf4Encoder(FourBitCode book, long numElements, int blocksize, PackedSink sink, Path path, String tensorName) {
        this.book = book;
        if (!Nf4Codec.isValidBlocksize(blocksize)) {
            throw new IllegalArgumentException("blocksize " + blocksize + " is not a power of two from 32 to 4096");
        }
        if (numElements <= 0) {
            throw new IllegalArgumentException("an NF4 weight has at least one element");
        }
        long blocks = Nf4Codec.numBlocks(numElements, blocksize);
        if (blocks > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(tensorName + ": " + numElements + " elements make " + blocks
                    + " blocks, more than one array holds; use a larger blocksize");
        }
        this.numElements = numElements;
        this.blocksize = blocksize;
        this.sink = sink;
        this.path = path;
        this.tensorName = tensorName;
        this.block = new float[blocksize];
        this.codes = new byte[blocksize];
        this.absmax = new float[(int) blocks];
        this.out = new byte[Math.max(OUT_BUFFER_BYTES, blocksize / 2 + 1)];
    }

    /** Takes the next {@code len} values. */
    public void accept(float[] values, int off, int len) throws IOException, QuantException {
        checkRoom(len);
        for (int i = 0; i < len; i++) {
            put(values[off + i]);
        }
    }

    /**
     * Takes the next {@code count} values from little-endian {@code src} (from its position) in
     * the given format, advancing the position.
     */
    public void accept(ByteBuffer src, FloatFormat format, int count) throws IOException, QuantException {
        checkRoom(count);
        for (int i = 0; i < count; i++) {
            int bits = format == FloatFormat.F32 ? src.getInt() : src.getShort() & 0xFFFF;
            put((float) format.decode(bits));
        }
    }

    private void checkRoom(int len) {
        if (finished) {
            throw new IllegalStateException(tensorName + ": encoder already finished");
        }
        if (len < 0 || consumed + len > numElements) {
            throw new IllegalArgumentException(tensorName + ": " + (consumed + len) + " values for a weight of " + numElements);
        }
    }

    private void put(float v) throws IOException, QuantException {
        if (!Float.isFinite(v)) {
            throw new QuantException(NON_FINITE, path, tensorName, "element " + consumed + " is " + v
                    + "; NF4 cannot represent it and it would poison its block's absmax; fix the weight before quantizing");
        }
        block[filled++] = v;
        consumed++;
        if (filled == blocksize || consumed == numElements) {
            flushBlock();
        }
    }

    private void flushBlock() throws IOException {
        float a = Nf4Codec.quantizeBlock(book, block, 0, filled, codes, 0);
        absmax[blockIndex++] = a;
        if (a > 0) {
            for (int i = 0; i < filled; i++) {
                double err = Math.abs((double) block[i] - Nf4Codec.dequantize(book, codes[i], a)) / a;
                if (err > maxErrorOverAbsmax) {
                    maxErrorOverAbsmax = err;
                }
            }
        }
        int bytes = (filled + 1) / 2;
        if (outPos + bytes > out.length) {
            drain();
        }
        Nf4Codec.pack(codes, 0, filled, out, outPos, Nf4Codec.paddingCode(book, a));
        outPos += bytes;
        filled = 0;
    }

    private void drain() throws IOException {
        if (outPos > 0) {
            sink.write(ByteBuffer.wrap(out, 0, outPos));
            outPos = 0;
        }
    }

    /**
     * Quantizes whole blocks on their own: elements {@code [firstElement, firstElement + count)} of
     * a weight of {@code numElements}, read from little-endian {@code src} (element
     * {@code firstElement} at index 0) in {@code format}. The range must start on a block boundary
     * and end on one or at the end of the weight, so no block lies partly outside it; codes go to
     * {@code packed[firstElement / 2 ...]} (block starts are even, so ranges share no byte) and
     * absmax values to {@code absmax[firstElement / blocksize ...]}. The bytes are those an encoder
     * fed the same values in order writes (both are {@link Nf4Codec#quantizeBlock} block by block),
     * and threads may encode disjoint ranges of one weight at once.
     *
     * @return the largest |x - dequant(quant(x))| / absmax over the range, as {@link #maxErrorOverAbsmax()}
     * @throws QuantException NON_FINITE for a NaN or infinite value ({@code path}, {@code tensorName} name it)
     */
    public static double encodeBlocks(ByteBuffer src, FloatFormat format, long numElements, int blocksize, long firstElement, int count,
                                    byte[] packed, float[] absmax, Path path, String tensorName) throws QuantException {
        return encodeBlocks(FourBitCode.NF4, src, format, numElements, blocksize, firstElement, count, packed, absmax, path, tensorName);
    }

    /** {@link #encodeBlocks(ByteBuffer, FloatFormat, long, int, long, int, byte[], float[], Path, String)} in code book {@code book}. */
    public static double encodeBlocks(FourBitCode book, ByteBuffer src, FloatFormat format, long numElements, int blocksize, long firstElement,
                                    int count, byte[] packed, float[] absmax, Path path, String tensorName) throws QuantException {
        long end = firstElement + count;
        if (firstElement < 0 || count < 0 || end > numElements || firstElement % blocksize != 0
                || (end % blocksize != 0 && end != numElements)) {
            throw new IllegalArgumentException(tensorName + ": elements [" + firstElement + ", " + end + ") do not cover whole blocks of "
                    + blocksize + " of " + numElements);
        }
        float[] block = new float[blocksize];
        byte[] codes = new byte[blocksize];
        double maxError = 0;
        for (long start = firstElement; start < end; start += blocksize) {
            int len = (int) Math.min(blocksize, end - start);
            int base = (int) (start - firstElement);
            for (int i = 0; i < len; i++) {
                float v = (float) format.decode(format.bitsAt(src, base + i));
                if (!Float.isFinite(v)) {
                    throw new QuantException(NON_FINITE, path, tensorName, "element " + (start + i) + " is " + v
                            + "; NF4 cannot represent it and it would poison its block's absmax");
                }
                block[i] = v;
            }
            float a = Nf4Codec.quantizeBlock(book, block, 0, len, codes, 0);
            absmax[(int) (start / blocksize)] = a;
            Nf4Codec.pack(codes, 0, len, packed, (int) (start / 2), Nf4Codec.paddingCode(book, a));
            if (a > 0) {
                for (int i = 0; i < len; i++) {
                    maxError = Math.max(maxError, Math.abs((double) block[i] - Nf4Codec.dequantize(book, codes[i], a)) / a);
                }
            }
        }
        return maxError;
    }

    /**
     * Writes the last packed bytes and returns the absmax of every block (length
     * {@code ceil(n / blocksize)}). All {@code numElements} values must have been given.
     */
    public float[] finish() throws IOException {
        if (consumed != numElements) {
            throw new IllegalStateException(tensorName + ": " + consumed + " of " + numElements + " values were given");
        }
        if (!finished) {
            drain();
            finished = true;
        }
        return absmax;
    }

    /** The largest |x - dequant(quant(x))| / absmax so far (at most 0.152, NF4's largest half gap, up to rounding). */
    public double maxErrorOverAbsmax() {
        return maxErrorOverAbsmax;
    }

    public long numElements() {
        return numElements;
    }

    public int blocksize() {
        return blocksize;
    }
}
