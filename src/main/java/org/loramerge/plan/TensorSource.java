package org.loramerge.plan;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.QuantizedWeight;

/**
 * Where a tensor's values come from: a base shard or the adapter file, or a quantized weight of
 * the base (bitsandbytes NF4), which reads as its dequantized values.
 *
 * <p>Whatever the kind, {@link #read} gives the bytes of a range in {@link #dtype()}, so the merge
 * engine computes on a quantized weight exactly as on a dense one: for an NF4 source those are the
 * values bitsandbytes' dequantize_4bit returns (docs/FORMATS.md §5: {@code fl32(NF4[code] · absmax)},
 * absmax double-dequantized when nested, then rounded once, to nearest even, to the quant state's
 * dtype), which is the weight PEFT merges a QLoRA adapter into.
 *
 * @param file      the file holding the tensor (for a quantized source, the one holding its codes)
 * @param info      the tensor; for a quantized source a view of the dequantized weight: name
 *                  {@code P.weight}, the quant state's dtype and shape, no file offset
 * @param quantized the quantized weight of a quantized source, null for a dense one
 */
public record TensorSource(SafetensorsFile file, TensorInfo info, QuantizedWeight quantized) {
    /** Which bytes of a source an engine reads. */
    public enum Form {
        /** Its values in {@link #dtype()} ({@link #read}). */
        VALUES,
        /** A quantized source's stored codes ({@link #readStored}), for an engine that dequantizes on its own. */
        STORED
    }

    /** A dense tensor of a file. */
    public TensorSource(SafetensorsFile file, TensorInfo info) {
        this(file, info, null);
    }

    /** The dequantized view of a quantized weight. */
    public static TensorSource dequantized(QuantizedWeight w) {
        DType dtype = w.dtype();
        TensorInfo view = new TensorInfo(w.weightName(), dtype, w.shape(), -1, w.numElements() * dtype.sizeInBytes());
        return new TensorSource(w.file(), view, w);
    }

    public DType dtype() {
        return info.dtype();
    }

    /** True for the dequantized view of a quantized weight. */
    public boolean isQuantized() {
        return quantized != null;
    }

    /**
     * Rows {@code [row0, row0 + rowCount)} of the matrix view [rows, cols] in {@code form}: the
     * values ({@link #read}) or the stored codes ({@link #readStored}).
     */
    public Bytes readRows(Form form, long row0, int rowCount, long cols) throws IOException {
        if (form == Form.STORED) {
            return readStored(row0 * cols, Math.toIntExact(rowCount * cols));
        }
        long rowBytes = cols * dtype().sizeInBytes();
        return read(row0 * rowBytes, rowCount * rowBytes);
    }

    /**
     * Rows {@code [row0, row0 + rowCount)} of a dense source's values read into {@code dst} (from
     * its index 0, by positional reads rather than a mapping); returns {@code dst} positioned at 0,
     * limited to those bytes, little-endian.
     */
    public ByteBuffer readRowsInto(long row0, int rowCount, long cols, ByteBuffer dst) throws IOException {
        if (quantized != null) {
            throw new IllegalStateException(this + " is quantized: its values are decoded, not read");
        }
        long rowBytes = cols * dtype().sizeInBytes();
        dst.clear().limit(Math.toIntExact(rowCount * rowBytes));
        file.readInto(info, row0 * rowBytes, dst);
        return dst.flip().order(ByteOrder.LITTLE_ENDIAN);
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
     * map of a dense tensor (at most {@link MappedRegion#MAX_WINDOW}), or for a quantized source its
     * dequantized values decoded into a new heap buffer (the same window limit applies). Offsets
     * must fall on element boundaries.
     */
    public Bytes read(long byteOffset, long length) throws IOException {
        if (quantized == null) {
            return mapped(file.map(info, byteOffset, length));
        }
        int size = info.dtype().sizeInBytes();
        if (byteOffset < 0 || length < 0 || byteOffset + length > info.sizeInBytes() || byteOffset % size != 0 || length % size != 0
                || length > MappedRegion.MAX_WINDOW) {
            throw new IllegalArgumentException("window [" + byteOffset + ", +" + length + ") outside or across the elements of " + info);
        }
        ByteBuffer b = ByteBuffer.allocate((int) length).order(ByteOrder.LITTLE_ENDIAN);
        quantized.dequantizeTo(byteOffset / size, (int) (length / size), b);
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
     * The stored codes of elements {@code [firstElement, firstElement + count)} of a quantized
     * source, memory-mapped (see {@link QuantizedWeight#storedCodes}; for NF4, byte 0 holds element
     * {@code firstElement & ~1}). For an engine that dequantizes on its own.
     */
    public Bytes readStored(long firstElement, int count) throws IOException {
        if (quantized == null) {
            throw new IllegalStateException(this + " is not a quantized weight");
        }
        return mapped(quantized.storedCodes(firstElement, count));
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
        ByteBuffer b = quantized == null ? file.readAll(info) : read(0, info.sizeInBytes()).bytes();
        int n = Math.toIntExact(info.numElements());
        double[] out = new double[n];
        if (info.dtype() == DType.F64) {
            for (int i = 0; i < n; i++) {
                out[i] = b.getDouble(i * 8);
            }
        } else if (info.dtype().isMergeable()) {
            FloatFormat f = FloatFormat.of(info.dtype());
            for (int i = 0; i < n; i++) {
                out[i] = f.decode(f.bitsAt(b, i));
            }
        } else {
            throw new IllegalStateException(info + " is not a floating-point tensor");
        }
        return out;
    }

    /**
     * Some elements of a dense tensor seen as the matrix [dim 0, rest], read exactly as doubles:
     * {@code colCount} columns {@code firstCol, firstCol + colStride, …} of rows {@code [firstRow,
     * firstRow + rowCount)}, row-major [rowCount, colCount]. For one expert's part of a LoRA factor,
     * without decoding the other experts' values (a factor of a large MoE holds hundreds of experts).
     */
    public double[] gather(long firstRow, int rowCount, long firstCol, int colCount, long colStride) throws IOException {
        if (quantized != null) {
            throw new IllegalStateException(this + " is a quantized weight, not a factor");
        }
        long rowLength = info.rank() == 0 ? 1 : info.numElements() / info.dim(0);
        long lastCol = firstCol + (colCount - 1) * colStride;
        if (firstRow < 0 || rowCount < 0 || firstRow + rowCount > (info.rank() == 0 ? 1 : info.dim(0)) || firstCol < 0 || colStride < 1
                || colCount > 0 && lastCol >= rowLength) {
            throw new IllegalArgumentException("rows " + firstRow + "+" + rowCount + ", columns " + firstCol + " step " + colStride + " x "
                    + colCount + " outside " + info);
        }
        double[] out = new double[Math.multiplyExact(rowCount, colCount)];
        int size = info.dtype().sizeInBytes();
        long rowBytes = rowLength * size;
        // whole rows per memory map window, at least one (a factor's row is far below the window)
        int rowsPerWindow = (int) Math.max(1, Math.min(rowCount, MappedRegion.MAX_WINDOW / rowBytes));
        FloatFormat f = info.dtype() == DType.F64 ? null : FloatFormat.of(info.dtype());
        for (int i0 = 0; i0 < rowCount; i0 += rowsPerWindow) {
            int n = Math.min(rowsPerWindow, rowCount - i0);
            try (MappedRegion r = file.map(info, (firstRow + i0) * rowBytes, n * rowBytes)) {
                ByteBuffer b = r.bytes();
                for (int i = 0; i < n; i++) {
                    for (int c = 0; c < colCount; c++) {
                        long element = i * rowLength + firstCol + c * colStride;
                        out[(i0 + i) * colCount + c] = f == null ? b.getDouble(Math.toIntExact(element * 8)) : f.decode(f.bitsAt(b, element));
                    }
                }
            }
        }
        return out;
    }

    @Override
    public String toString() {
        return file.path().getFileName() + ":" + info.name() + (quantized == null ? "" : " (" + quantized.describe() + ", dequantized)");
    }
}
