package org.loramerge.plan;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.loramerge.format.DType;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.Nf4Decoder;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantException;

/**
 * Where a tensor's values come from: a base shard or the adapter file, or a bitsandbytes NF4
 * weight of the base, which reads as its dequantized values.
 *
 * <p>Whatever the kind, {@link #read} gives the bytes of a range in {@link #dtype()}, so the merge
 * engine computes on an NF4 weight exactly as on a dense one: for an NF4 source those are the
 * values bitsandbytes' dequantize_4bit returns (FORMATS.md §5: {@code fl32(NF4[code] · absmax)},
 * absmax double-dequantized when nested, then rounded once, to nearest even, to the quant state's
 * dtype), which is the weight PEFT merges a QLoRA adapter into.
 *
 * @param file the file holding the tensor (for an NF4 source, the one holding {@code P.weight}'s codes)
 * @param info the tensor; for an NF4 source a view of the dequantized weight: name {@code P.weight},
 *             the quant state's dtype and shape, no file offset
 * @param nf4  the decoder of an NF4 source, null for a dense one
 */
public record TensorSource(SafetensorsFile file, TensorInfo info, Nf4Decoder nf4) {
    /** A dense tensor of a file. */
    public TensorSource(SafetensorsFile file, TensorInfo info) {
        this(file, info, null);
    }

    /** The dequantized view of an NF4 weight. */
    public static TensorSource dequantized(Nf4Tensor t) throws IOException, QuantException {
        DType dtype = t.dtype();
        TensorInfo view = new TensorInfo(t.weightName(), dtype, t.shape(), -1, t.numElements() * dtype.sizeInBytes());
        return new TensorSource(t.weight().file(), view, t.decoder());
    }

    public DType dtype() {
        return info.dtype();
    }

    /** True for the dequantized view of an NF4 weight. */
    public boolean isQuantized() {
        return nf4 != null;
    }

    /** Bytes of a source range; valid until closed. */
    public interface Bytes extends AutoCloseable {
        /** Little-endian, positioned at 0. */
        ByteBuffer bytes();

        @Override
        void close();
    }

    /**
     * Bytes {@code [byteOffset, byteOffset + length)} of the tensor in {@link #dtype()}: a memory
     * map of a dense tensor (at most {@link MappedRegion#MAX_WINDOW}), or for an NF4 source its
     * dequantized values decoded into a new heap buffer (the same window limit applies). Offsets
     * must fall on element boundaries.
     */
    public Bytes read(long byteOffset, long length) throws IOException {
        if (nf4 == null) {
            return mapped(file.map(info, byteOffset, length));
        }
        int size = info.dtype().sizeInBytes();
        if (byteOffset < 0 || length < 0 || byteOffset + length > info.sizeInBytes() || byteOffset % size != 0 || length % size != 0
                || length > MappedRegion.MAX_WINDOW) {
            throw new IllegalArgumentException("window [" + byteOffset + ", +" + length + ") outside or across the elements of " + info);
        }
        ByteBuffer b = ByteBuffer.allocate((int) length).order(ByteOrder.LITTLE_ENDIAN);
        nf4.dequantizeTo(byteOffset / size, (int) (length / size), b);
        return new Bytes() {
            @Override
            public ByteBuffer bytes() {
                return b.duplicate().order(ByteOrder.LITTLE_ENDIAN);
            }

            @Override
            public void close() {
            }
        };
    }

    /**
     * The packed 4-bit codes of elements {@code [firstElement, firstElement + count)} of an NF4
     * source, memory-mapped: byte 0 holds element {@code firstElement & ~1} (see
     * {@link Nf4Decoder#packed}). For a backend that dequantizes on its own.
     */
    public Bytes readPacked(long firstElement, int count) throws IOException {
        if (nf4 == null) {
            throw new IllegalStateException(this + " is not an NF4 weight");
        }
        return mapped(nf4.packed(firstElement, count));
    }

    /** A memory-mapped region as Bytes: closing them unmaps it. */
    private static Bytes mapped(MappedRegion r) {
        return new Bytes() {
            @Override
            public ByteBuffer bytes() {
                return r.bytes();
            }

            @Override
            public void close() {
                r.close();
            }
        };
    }

    /** Reads the whole tensor (a small one: adapter factors, vectors) as doubles, exactly. */
    public double[] readDoubles() throws IOException {
        ByteBuffer b = nf4 == null ? file.readAll(info) : read(0, info.sizeInBytes()).bytes();
        int n = Math.toIntExact(info.numElements());
        double[] out = new double[n];
        if (info.dtype() == DType.F64) {
            for (int i = 0; i < n; i++) {
                out[i] = b.getDouble(i * 8);
            }
        } else if (info.dtype().isMergeable()) {
            org.loramerge.format.FloatFormat f = org.loramerge.format.FloatFormat.of(info.dtype());
            for (int i = 0; i < n; i++) {
                out[i] = f.decode(f.bitsAt(b, i));
            }
        } else {
            throw new IllegalStateException(info + " is not a floating-point tensor");
        }
        return out;
    }

    @Override
    public String toString() {
        return file.path().getFileName() + ":" + info.name() + (nf4 == null ? "" : " (NF4, dequantized)");
    }
}
