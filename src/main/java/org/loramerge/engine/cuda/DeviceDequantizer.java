package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import jcuda.Pointer;
import jcuda.Sizeof;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.quant.BnbInt8Format;
import org.loramerge.quant.Fp8Weight;
import org.loramerge.quant.Nf4Weight;
import org.loramerge.quant.PackedIntWeight;
import org.loramerge.quant.QuantizedWeight;

/**
 * A quantized base weight dequantized on the device, one strategy per layout: what the weight
 * needs whole (the decoded absmax of NF4/FP4, FP8 scales, int8 row scales, GPTQ/AWQ zero points,
 * scales and g_idx) goes up once when the merge opens; per row block, the stored codes the
 * pipeline read (TensorSource.Form.STORED) are staged into page-locked
 * memory as the kernel reads them ({@link #stage}), go up, and the layout's kernel writes W in the
 * weight's dequantized dtype ({@link #dequantize}), bit for bit what its CPU codec writes
 * (QuantizedWeight#dequantizeTo). Every layout loramerge reads has one; a weight whose worst row
 * block would not fit a worker's staging buffer ({@link #of}) is dequantized on the host instead.
 */
public abstract class DeviceDequantizer implements AutoCloseable {
    /** The merge's dtype of W: the weight's dequantized dtype. */
    final FloatFormat format;
    final long rows;
    final long cols;
    private final DeviceMemory[] uploads;
    private boolean closed;

    private DeviceDequantizer(QuantizedWeight w, long rows, long cols, DeviceMemory... uploads) {
        this.format = FloatFormat.of(w.dtype());
        this.rows = rows;
        this.cols = cols;
        this.uploads = uploads;
    }

    /**
     * The device dequantizer of {@code w} seen as the matrix {@code [rows, cols]} the merge walks in
     * row blocks (TensorJob's rows and cols), with what it needs uploaded; null when the weight
     * should be read as values on the host: a kind without kernels, a view other than an FP8,
     * 8-bit, GPTQ or AWQ weight's own [out, in] (a 4-bit weight is read flattened, any view), or a
     * row block of up to {@code blockBytes} of W (the pipeline's blocks, and the worker's buffers)
     * whose staged codes could exceed {@code blockBytes} (an AWQ weight of very long rows: its
     * blocks stage whole words of 8 rows).
     */
    public static DeviceDequantizer of(CudaDevice device, QuantizedWeight w, long rows, long cols, int blockBytes) throws IOException {
        if (rows <= 0 || cols <= 0 || rows * cols != w.numElements()) {
            throw new IllegalArgumentException(w.weightName() + " is not a [" + rows + ", " + cols + "] matrix");
        }
        // every upload has landed when create returns (DeviceMemory#upload): the workers' streams may read it at once
        DeviceDequantizer d = create(device, w, rows, cols);
        if (d == null) {
            return null;
        }
        try {
            long rowBytes = d.cols * d.format.sizeInBytes();
            long maxRows = Math.max(1, Math.min(d.rows, blockBytes / rowBytes));
            if (d.maxStagedBytes(maxRows) <= blockBytes) {
                return d;
            }
        } catch (RuntimeException e) {
            d.close(); // nothing stays on the device
            throw e;
        }
        d.close(); // its row blocks would not fit the staging buffers: the host dequantizes it
        return null;
    }

    private static DeviceDequantizer create(CudaDevice device, QuantizedWeight w, long rows, long cols) throws IOException {
        DevicePool pool = device.pool();
        if (w instanceof Nf4Weight) {
            Nf4Weight nf4 = (Nf4Weight) w;
            try (CudaStream s = new CudaStream()) {
                return new FourBit(device, nf4, rows, cols, device.nf4().decodedAbsmax(pool, s, nf4.decoder()));
            }
        }
        if (w.shape().length != 2 || w.shape()[0] != rows || w.shape()[1] != cols) {
            return null; // the kernels below index the weight's own [out, in]
        }
        if (w instanceof Fp8Weight) {
            Fp8Weight f = (Fp8Weight) w;
            return new Fp8(device, f, rows, cols, upload(pool, f.scales()));
        }
        if (w instanceof BnbInt8Format.Int8Weight) {
            BnbInt8Format.Int8Weight i = (BnbInt8Format.Int8Weight) w;
            return new Int8(device, i, rows, cols, upload(pool, i.rowScales()));
        }
        if (w instanceof PackedIntWeight) {
            PackedIntWeight p = (PackedIntWeight) w;
            DeviceMemory zeros = upload(pool, p.zeros());
            DeviceMemory scales = null;
            try {
                scales = upload(pool, p.scales());
                return new PackedInt(device, p, rows, cols, zeros, scales, upload(pool, p.groupOfColumn()));
            } catch (RuntimeException e) {
                zeros.close();
                if (scales != null) {
                    scales.close();
                }
                throw e;
            }
        }
        return null;
    }

    /** The bytes that go up for rows {@code [row0, row0 + rowCount)}. */
    public abstract long stagedBytes(long row0, int rowCount);

    /** The most {@link #stagedBytes} of any block of at most {@code maxRows} rows. */
    abstract long maxStagedBytes(long maxRows);

    /**
     * Copies the stored codes of rows {@code [row0, row0 + rowCount)} from {@code stored} (what
     * TensorSource#readStored gave for them, positioned at 0) into {@code dst} from its index 0,
     * in the layout the kernel reads: {@link #stagedBytes} bytes.
     */
    public abstract void stage(ByteBuffer stored, long row0, int rowCount, ByteBuffer dst);

    /** Queues the kernel: the staged codes at {@code staged} (256-byte aligned) to W's bits at {@code out} (16-byte aligned). */
    public abstract void dequantize(CudaStream s, Pointer staged, long row0, int rowCount, Pointer out);

    /** Copies {@code bytes} of {@code stored} from index 0 into {@code dst} from index 0. */
    static void copy(ByteBuffer stored, long bytes, ByteBuffer dst) {
        dst.put(0, stored, 0, Math.toIntExact(bytes));
    }

    static DeviceMemory upload(DevicePool pool, float[] values) {
        return DeviceMemory.upload(pool, Pointer.to(values), (long) values.length * Sizeof.FLOAT);
    }

    static DeviceMemory upload(DevicePool pool, int[] values) {
        return DeviceMemory.upload(pool, Pointer.to(values), (long) values.length * Sizeof.INT);
    }

    /** The dtype it writes W in: the weight's dequantized dtype. */
    public FloatFormat format() {
        return format;
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("device dequantizer closed twice");
        }
        closed = true;
        for (DeviceMemory m : uploads) {
            m.close();
        }
    }

    /** bitsandbytes NF4 and FP4: packed nibbles from byte first / 2, the decoded absmax of every block (nf4.cu). */
    private static final class FourBit extends DeviceDequantizer {
        private final CudaDevice device;
        private final Nf4Weight weight;
        private final DeviceMemory absmax;

        FourBit(CudaDevice device, Nf4Weight weight, long rows, long cols, DeviceMemory absmax) {
            super(weight, rows, cols, absmax);
            this.device = device;
            this.weight = weight;
            this.absmax = absmax;
        }

        @Override
        public long stagedBytes(long row0, int rowCount) {
            long first = row0 * cols;
            long count = rowCount * cols;
            return (first + count - 1) / 2 - first / 2 + 1;
        }

        @Override
        long maxStagedBytes(long maxRows) {
            return (maxRows * cols + 1) / 2 + 1;
        }

        @Override
        public void stage(ByteBuffer stored, long row0, int rowCount, ByteBuffer dst) {
            copy(stored, stagedBytes(row0, rowCount), dst);
        }

        @Override
        public void dequantize(CudaStream s, Pointer staged, long row0, int rowCount, Pointer out) {
            device.nf4().dequant(s, weight.tensor().state().code(), format, staged, row0 * cols, rowCount * cols, absmax.pointer(),
                    weight.tensor().blocksize(), out);
        }
    }

    /** A layout of one byte a code, row-major (FP8, LLM.int8): a block's codes are staged as stored. */
    private abstract static class OneByteCodes extends DeviceDequantizer {
        OneByteCodes(QuantizedWeight w, long rows, long cols, DeviceMemory... uploads) {
            super(w, rows, cols, uploads);
        }

        @Override
        public long stagedBytes(long row0, int rowCount) {
            return rowCount * cols;
        }

        @Override
        long maxStagedBytes(long maxRows) {
            return maxRows * cols;
        }

        @Override
        public void stage(ByteBuffer stored, long row0, int rowCount, ByteBuffer dst) {
            copy(stored, stagedBytes(row0, rowCount), dst);
        }
    }

    /** FP8: one byte a code, row-major; the scales of the whole weight, decoded (quant.cu fp8_dequant). */
    private static final class Fp8 extends OneByteCodes {
        private final CudaDevice device;
        private final Fp8Weight weight;
        private final DeviceMemory scales;
        private final long blockRows;
        private final long blockCols;
        private final long scaleCols;

        Fp8(CudaDevice device, Fp8Weight weight, long rows, long cols, DeviceMemory scales) {
            super(weight, rows, cols, scales);
            this.device = device;
            this.weight = weight;
            this.scales = scales;
            // Fp8Weight.scaleAt as one formula: (row / blockRows) * scaleCols + col / blockCols
            switch (weight.scheme()) {
                case TENSOR:
                    blockRows = rows;
                    blockCols = cols;
                    scaleCols = 1;
                    break;
                case CHANNEL:
                    blockRows = 1;
                    blockCols = cols;
                    scaleCols = 1;
                    break;
                default:
                    blockRows = weight.blockRows();
                    blockCols = weight.blockCols();
                    scaleCols = (cols + blockCols - 1) / blockCols;
                    break;
            }
        }

        @Override
        public void dequantize(CudaStream s, Pointer staged, long row0, int rowCount, Pointer out) {
            device.quant().fp8(s, format, staged, row0, rowCount, cols, scales.pointer(), blockRows, blockCols, scaleCols,
                    weight.weight().info().dtype() == DType.F8_E5M2, FloatFormat.of(weight.productDtype()), out);
        }
    }

    /** LLM.int8: one byte a code, row-major; each row's SCB (quant.cu int8_dequant). */
    private static final class Int8 extends OneByteCodes {
        private final CudaDevice device;
        private final DeviceMemory scb;

        Int8(CudaDevice device, BnbInt8Format.Int8Weight weight, long rows, long cols, DeviceMemory scb) {
            super(weight, rows, cols, scb);
            this.device = device;
            this.scb = scb;
        }

        @Override
        public void dequantize(CudaStream s, Pointer staged, long row0, int rowCount, Pointer out) {
            device.quant().int8(s, staged, row0, rowCount, cols, scb.pointer(), out);
        }
    }

    /** GPTQ and AWQ: the block's qweight words gathered (PackedIntWeight#gatherRowWords); zeros, scales and g_idx of the whole weight. */
    private static final class PackedInt extends DeviceDequantizer {
        private final CudaDevice device;
        private final PackedIntWeight weight;
        private final DeviceMemory zeros;
        private final DeviceMemory scales;
        private final DeviceMemory groups;

        PackedInt(CudaDevice device, PackedIntWeight weight, long rows, long cols, DeviceMemory zeros, DeviceMemory scales,
                  DeviceMemory groups) {
            super(weight, rows, cols, zeros, scales, groups);
            this.device = device;
            this.weight = weight;
            this.zeros = zeros;
            this.scales = scales;
            this.groups = groups;
        }

        @Override
        public long stagedBytes(long row0, int rowCount) {
            return weight.rowWords(row0, rowCount) * 4;
        }

        @Override
        long maxStagedBytes(long maxRows) {
            if (weight.packing() == PackedIntWeight.Packing.AWQ_GEMM) {
                return cols * ((maxRows + 7) / 8 + 1) * 4; // an unaligned block straddles one more word column
            }
            return stagedBytes(0, (int) maxRows);
        }

        @Override
        public void stage(ByteBuffer stored, long row0, int rowCount, ByteBuffer dst) {
            weight.gatherRowWords(stored, row0, rowCount, dst);
        }

        @Override
        public void dequantize(CudaStream s, Pointer staged, long row0, int rowCount, Pointer out) {
            if (weight.packing() == PackedIntWeight.Packing.AWQ_GEMM) {
                device.quant().awq(s, format, staged, row0, rowCount, cols, rows, zeros.pointer(), scales.pointer(), groups.pointer(), out);
            } else {
                device.quant().gptq(s, format, staged, row0, rowCount, cols, rows, weight.bits(), zeros.pointer(), scales.pointer(),
                        groups.pointer(), out);
            }
        }
    }
}
