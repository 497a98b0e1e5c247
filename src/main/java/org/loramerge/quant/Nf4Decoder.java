package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;

import static org.loramerge.quant.QuantException.Reason.TENSOR_MISMATCH;

/**
 * Dequantizes any range of an {@link Nf4Tensor}'s flattened elements, reading only the bytes of
 * that range (its codes and the absmax of the blocks it touches) through short-lived memory maps:
 * a merge can walk a weight in row blocks with memory bounded by the block, whatever the weight's
 * size. Only the nested tables (256 floats, and one float per 256 blocks) are held.
 *
 * <p>Values are those of bitsandbytes' dequantize_4bit: {@code fl32(NF4[code] · absmax)} with
 * absmax decoded as {@link DoubleQuant#decode} when double-quantized, then (for
 * {@link #dequantizeRounded}) rounded once to the quant state's dtype, round-to-nearest-even, as
 * the CUDA kernel's store to bf16/f16 does. Instances are safe to share between threads.
 */
public final class Nf4Decoder {
    private final Nf4Tensor tensor;
    private final FloatFormat format;
    private final float[] nestedMap;
    private final float[] nestedAbsmax;
    private final float offset;
    private final int nestedBlocksize;
    private final FourBitCode book;

    Nf4Decoder(Nf4Tensor tensor) throws IOException, QuantException {
        this.tensor = tensor;
        this.book = tensor.state().code();
        this.format = FloatFormat.of(tensor.dtype());
        if (tensor.isDoubleQuant()) {
            nestedMap = Nf4Tensor.readFloats(tensor.nestedQuantMap());
            nestedAbsmax = Nf4Tensor.readFloats(tensor.nestedAbsmax());
            offset = tensor.state().nested().offset();
            nestedBlocksize = tensor.state().nested().blocksize();
            for (float v : nestedMap) {
                if (!Float.isFinite(v)) {
                    throw new QuantException(TENSOR_MISMATCH, tensor.nestedQuantMap().file().path(), tensor.nestedQuantMap().name(),
                            "holds " + v + "; the dynamic map is finite, the file is corrupt");
                }
            }
        } else {
            nestedMap = null;
            nestedAbsmax = null;
            offset = 0f;
            nestedBlocksize = 0;
        }
    }

    public Nf4Tensor tensor() {
        return tensor;
    }

    /** True when the absmax values are double-quantized (8-bit codes, nested absmax, map, offset). */
    public boolean isDoubleQuant() {
        return nestedMap != null;
    }

    /** The stored nested_quant_map (double quantization only). */
    public float[] nestedQuantMap() {
        return nestedMap.clone();
    }

    /** The stored nested_absmax (double quantization only). */
    public float[] nestedAbsmax() {
        return nestedAbsmax.clone();
    }

    /** The quant state's nested offset (double quantization only). */
    public float offset() {
        return offset;
    }

    /** The quant state's nested blocksize (double quantization only). */
    public int nestedBlocksize() {
        return nestedBlocksize;
    }

    /**
     * The stored absmax tensor of the whole weight, as it is in the file: one byte per block when
     * double-quantized, else one little-endian fp32 per block. For the GPU engine, which decodes it
     * on the device.
     */
    public ByteBuffer storedAbsmax() throws IOException {
        Nf4Tensor.Part p = tensor.absmax();
        return p.file().readAll(p.info());
    }

    /**
     * The packed codes of elements {@code [firstElement, firstElement + count)}: bytes
     * {@code [firstElement / 2, (firstElement + count - 1) / 2]} of {@code P.weight}, memory-mapped
     * (byte 0 holds element {@code firstElement & ~1}).
     */
    public MappedRegion packed(long firstElement, int count) throws IOException {
        long n = tensor.numElements();
        if (firstElement < 0 || count <= 0 || firstElement + count > n) {
            throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") outside " + tensor + " of " + n);
        }
        long firstByte = firstElement / 2;
        Nf4Tensor.Part w = tensor.weight();
        return w.file().map(w.info(), firstByte, (firstElement + count - 1) / 2 - firstByte + 1);
    }

    /** The decoded absmax of blocks {@code [firstBlock, firstBlock + count)}. */
    public float[] absmax(long firstBlock, int count) throws IOException {
        float[] out = new float[count];
        readAbsmax(firstBlock, count, out);
        return out;
    }

    private void readAbsmax(long firstBlock, int count, float[] out) throws IOException {
        if (firstBlock < 0 || count < 0 || firstBlock + count > tensor.state().numBlocks()) {
            throw new IllegalArgumentException("blocks [" + firstBlock + ", +" + count + ") outside " + tensor);
        }
        Nf4Tensor.Part p = tensor.absmax();
        if (nestedMap == null) {
            try (MappedRegion r = p.file().map(p.info(), firstBlock * 4, (long) count * 4)) {
                r.bytes().asFloatBuffer().get(out, 0, count);
            }
            return;
        }
        try (MappedRegion r = p.file().map(p.info(), firstBlock, count)) {
            ByteBuffer b = r.bytes();
            for (int i = 0; i < count; i++) {
                long block = firstBlock + i;
                out[i] = DoubleQuant.decode(b.get(i) & 0xFF, nestedAbsmax[(int) (block / nestedBlocksize)], offset, nestedMap);
            }
        }
    }

    /**
     * Writes the fp32 values of elements {@code [firstElement, firstElement + count)} (flattened
     * row-major) to {@code dst[dstOffset...]}.
     */
    public void dequantize(long firstElement, int count, float[] dst, int dstOffset) throws IOException {
        decode(firstElement, count, dst, dstOffset, null, null);
    }

    /**
     * Writes elements {@code [firstElement, firstElement + count)} rounded to the weight's dtype,
     * as doubles (exact): the values transformers/PEFT see after {@code dequantize_4bit}.
     */
    public void dequantizeRounded(long firstElement, int count, double[] dst, int dstOffset) throws IOException {
        decode(firstElement, count, null, dstOffset, dst, null);
    }

    /**
     * Writes elements {@code [firstElement, firstElement + count)} rounded to the weight's dtype
     * as that dtype's little-endian bits, element {@code firstElement} at index 0 of {@code dst}:
     * the bytes a 16-bit checkpoint of the dequantized weight would hold, so that the merge engine
     * reads an NF4 weight exactly as it reads a dense one.
     */
    public void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException {
        decode(firstElement, count, null, 0, null, dst);
    }

    /** One of {@code f32}, {@code rounded} or {@code bits} is the destination. */
    private void decode(long firstElement, int count, float[] f32, int dstOffset, double[] rounded, ByteBuffer bits) throws IOException {
        long n = tensor.numElements();
        if (firstElement < 0 || count < 0 || firstElement + count > n) {
            throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") outside " + tensor + " of " + n);
        }
        if (count == 0) {
            return;
        }
        int bs = tensor.blocksize();
        long last = firstElement + count - 1;
        long firstBlock = firstElement / bs;
        int blocks = (int) (last / bs - firstBlock + 1);
        float[] absmax = new float[blocks];
        readAbsmax(firstBlock, blocks, absmax);
        long firstByte = firstElement / 2;
        long bytes = last / 2 - firstByte + 1;
        Nf4Tensor.Part w = tensor.weight();
        try (MappedRegion r = w.file().map(w.info(), firstByte, bytes)) {
            ByteBuffer b = r.bytes();
            int inBlock = (int) (firstElement % bs);
            int block = 0;
            for (int i = 0; i < count; i++) {
                long e = firstElement + i;
                int code = Nf4Codec.codeAt(b.get((int) ((e >>> 1) - firstByte)), e);
                float v = Nf4Codec.dequantize(book, code, absmax[block]);
                if (f32 != null) {
                    f32[dstOffset + i] = v;
                } else if (rounded != null) {
                    rounded[dstOffset + i] = format.round(v);
                } else {
                    format.putBits(bits, i, format.encode(format.round(v)));
                }
                if (++inBlock == bs) {
                    inBlock = 0;
                    block++;
                }
            }
        }
    }
}
