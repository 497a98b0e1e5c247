package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.IntBuffer;
import java.util.List;
import java.util.Locale;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

/**
 * A GPTQ or AWQ weight (docs/FORMATS.md §13): integer codes packed into int32 words, with per-group
 * scales and zero points. Element (o, i) of the {@code [out, in]} weight, in group {@code g}, is
 * {@code RN_dtype((q − z) · s)}: GPTQModel's {@code dequantize_weight}
 * (gptqmodel/nn_modules/qlinear/__init__.py: {@code scales[g_idx] * (weight - zeros[g_idx])}) and
 * {@code dequantize_gemm} (gptqmodel/quantization/awq/utils/packing_utils.py:
 * {@code (iweight - izeros) * scales}), the integer difference times the stored scale, rounded once to
 * the scales' dtype ({@link #dtype()}, fp16 in practice). Layouts:
 *
 * <ul>
 * <li>GPTQ: {@code qweight} I32 {@code [in·bits/32, out]}, input row i in word {@code i / (32/bits)} at
 *     bit {@code (i % (32/bits))·bits}; {@code qzeros} I32 {@code [groups, out·bits/32]}, column o at
 *     bit {@code (o % (32/bits))·bits}; {@code scales} {@code [groups, out]}; {@code g_idx} I32
 *     {@code [in]} (act-order permutes it; absent means {@code i / group_size}). Checkpoint format
 *     "gptq" (v1: AutoGPTQ, optimum) stores zero − 1: GPTQModel adds {@code 0x11111111} (4-bit;
 *     {@code 0x01010101} 8-bit, {@code 0x55555555} 2-bit) to each int32 word of qzeros, carries
 *     included (gptqmodel/utils/model.py convert_gptq_v1_to_v2_format_module), which is what
 *     transformers loads; "gptq_v2" stores the zero.</li>
 * <li>AWQ (GEMM): {@code qweight} I32 {@code [in, out/8]} and {@code qzeros} I32 {@code [groups, out/8]},
 *     the 8 nibbles of a word holding columns in the order 0, 2, 4, 6, 1, 3, 5, 7 (AWQ_ORDER);
 *     {@code scales} {@code [groups, out]}; group {@code i / group_size}.</li>
 * </ul>
 */
public final class PackedIntWeight implements QuantizedWeight {
    /** How codes and zeros are packed, and what a stored zero means. */
    public enum Packing {
        /** GPTQ, zeros stored minus one (checkpoint_format "gptq"). */
        GPTQ_V1,
        /** GPTQ, zeros stored as they are (checkpoint_format "gptq_v2"). */
        GPTQ_V2,
        /** AWQ's GEMM layout. */
        AWQ_GEMM
    }

    /** A tensor of the group and its file. */
    public record Part(SafetensorsFile file, TensorInfo info) {
    }

    /** Nibble of column {@code c % 8} in an AWQ word: the inverse of AWQ_ORDER [0, 2, 4, 6, 1, 3, 5, 7]. */
    private static final int[] AWQ_NIBBLE_OF_COLUMN = {0, 4, 1, 5, 2, 6, 3, 7};

    private final String weightName;
    private final Packing packing;
    private final int bits;
    private final int groupSize;
    private final Part qweight;
    private final long rows;
    private final long cols;
    private final int[] zeros;
    private final float[] scales;
    private final int[] groupOfColumn;
    private final DType dtype;
    private final List<String> tensorNames;
    private final boolean actOrder;

    /**
     * @param rows          out features
     * @param cols          in features
     * @param zeros         the zero point of every (group, out) pair, decoded (v1 corrected), {@code [groups · rows]}
     * @param scales        the scale of every (group, out) pair, {@code [groups · rows]}
     * @param groupOfColumn the group of every input column ({@code g_idx})
     */
    PackedIntWeight(String weightName, Packing packing, int bits, int groupSize, Part qweight, long rows, long cols, int[] zeros, float[] scales,
                    int[] groupOfColumn, DType dtype, List<String> tensorNames, boolean actOrder) {
        this.weightName = weightName;
        this.packing = packing;
        this.bits = bits;
        this.groupSize = groupSize;
        this.qweight = qweight;
        this.rows = rows;
        this.cols = cols;
        this.zeros = zeros;
        this.scales = scales;
        this.groupOfColumn = groupOfColumn;
        this.dtype = dtype;
        this.tensorNames = List.copyOf(tensorNames);
        this.actOrder = actOrder;
    }

    @Override
    public String weightName() {
        return weightName;
    }

    @Override
    public String kind() {
        return packing == Packing.AWQ_GEMM ? "awq" : "gptq";
    }

    @Override
    public DType dtype() {
        return dtype;
    }

    @Override
    public long[] shape() {
        return new long[] {rows, cols};
    }

    @Override
    public long numElements() {
        return rows * cols;
    }

    @Override
    public List<String> tensorNames() {
        return tensorNames;
    }

    @Override
    public SafetensorsFile file() {
        return qweight.file();
    }

    public Packing packing() {
        return packing;
    }

    public int bits() {
        return bits;
    }

    @Override
    public String describe() {
        String what = packing == Packing.AWQ_GEMM ? "AWQ (GEMM)" : "GPTQ (" + (packing == Packing.GPTQ_V1 ? "gptq" : "gptq_v2") + " zeros)";
        return String.format(Locale.ROOT, "%s %d-bit, %s%s, %s", what, bits,
                groupSize > 0 ? "group size " + groupSize : "one group", actOrder ? ", act-order" : "", dtype.torchName());
    }

    /** The code of element (row o, column i) from the word that holds it. */
    private int code(int word, long o, long i) {
        int shift = packing == Packing.AWQ_GEMM ? 4 * AWQ_NIBBLE_OF_COLUMN[(int) (o & 7)] : (int) (i % (32 / bits)) * bits;
        return (word >>> shift) & ((1 << bits) - 1);
    }

    /** {@code RN_dtype((q − z) · s)}, exactly: the product of a small integer and a 16-bit scale is exact in double. */
    private double value(FloatFormat out, int q, long o, long i) {
        int g = groupOfColumn[(int) i];
        int k = (int) (g * rows + o);
        return out.round((double) (q - zeros[k]) * scales[k]);
    }

    @Override
    public void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException {
        if (firstElement < 0 || count < 0 || firstElement + count > numElements()) {
            throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") outside " + weightName);
        }
        if (count == 0) {
            return;
        }
        FloatFormat out = FloatFormat.of(dtype);
        long row0 = firstElement / cols;
        long row1 = (firstElement + count - 1) / cols; // inclusive
        try (MappedRegion r = qweight.file().map(qweight.info(), 0, qweight.info().sizeInBytes())) {
            IntBuffer words = r.bytes().asIntBuffer();
            if (packing == Packing.AWQ_GEMM) {
                // qweight [in, out/8]: word (i, o / 8) holds column i of rows o..o+7
                long wordCols = rows / 8;
                for (long i = 0; i < cols; i++) {
                    for (long o = row0; o <= row1; o++) {
                        put(out, dst, firstElement, count, o, i, code(words.get((int) (i * wordCols + o / 8)), o, i));
                    }
                }
                return;
            }
            // GPTQ qweight [in / (32/bits), out]: word (p, o) holds columns p·(32/bits)... of row o
            int perWord = 32 / bits;
            long packedRows = cols / perWord;
            for (long p = 0; p < packedRows; p++) {
                for (long o = row0; o <= row1; o++) {
                    int word = words.get((int) (p * rows + o));
                    for (int j = 0; j < perWord; j++) {
                        long i = p * perWord + j;
                        put(out, dst, firstElement, count, o, i, code(word, o, i));
                    }
                }
            }
        }
    }

    private void put(FloatFormat out, ByteBuffer dst, long firstElement, int count, long o, long i, int q) {
        long e = o * cols + i;
        if (e >= firstElement && e < firstElement + count) {
            out.putBits(dst, e - firstElement, out.encode(value(out, q, o, i)));
        }
    }

    /**
     * The qweight words that hold rows {@code [row0, row0 + rowCount)} lie in one span of the
     * tensor: GPTQ words {@code (p, o)} for every packed row p and o in the rows, AWQ words
     * {@code (i, w)} for every input column i and the word columns w of the rows. For whole rows
     * ({@code firstElement} and {@code count} multiples of the row length): the span from the
     * first such word to the last, memory-mapped; {@link #gatherRowWords} takes the block's words
     * out of it.
     */
    @Override
    public MappedRegion storedCodes(long firstElement, int count) throws IOException {
        if (firstElement < 0 || count <= 0 || firstElement % cols != 0 || count % cols != 0 || firstElement + count > numElements()) {
            throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") are not whole rows of " + weightName);
        }
        long row0 = firstElement / cols;
        long rowCount = count / cols;
        long first = firstWordOf(row0);
        long last = packing == Packing.AWQ_GEMM ? (cols - 1) * (rows / 8) + (row0 + rowCount - 1) / 8
                : (cols / (32 / bits) - 1) * rows + row0 + rowCount - 1;
        return qweight.file().map(qweight.info(), first * 4, (last - first + 1) * 4);
    }

    /** The index in qweight of the first word {@link #storedCodes} maps for rows from row0. */
    private long firstWordOf(long row0) {
        return packing == Packing.AWQ_GEMM ? row0 / 8 : row0;
    }

    /**
     * The number of qweight words a row block takes once gathered ({@link #gatherRowWords}): GPTQ
     * {@code in / (32 / bits)} packed rows of rowCount words; AWQ {@code in} columns of the word
     * columns {@code [row0 / 8, ceil((row0 + rowCount) / 8))}.
     */
    public long rowWords(long row0, int rowCount) {
        if (packing == Packing.AWQ_GEMM) {
            return cols * ((row0 + rowCount + 7) / 8 - row0 / 8);
        }
        return cols / (32 / bits) * rowCount;
    }

    /**
     * Gathers the words of rows {@code [row0, row0 + rowCount)} from {@code stored} (what
     * {@link #storedCodes} mapped for them, positioned at 0) into {@code dst} from its position 0,
     * little-endian: GPTQ as {@code [in / (32 / bits), rowCount]}, AWQ as {@code [in, wordCols]}
     * (the layouts kernels/quant.cu's gptq_dequant and awq_dequant read).
     */
    public void gatherRowWords(ByteBuffer stored, long row0, int rowCount, ByteBuffer dst) {
        long spanRows; // runs of contiguous words, one per packed row (GPTQ) or input column (AWQ)
        long run;
        long stride;
        if (packing == Packing.AWQ_GEMM) {
            spanRows = cols;
            run = (row0 + rowCount + 7) / 8 - row0 / 8;
            stride = rows / 8;
        } else {
            spanRows = cols / (32 / bits);
            run = rowCount;
            stride = rows;
        }
        int runBytes = Math.toIntExact(run * 4);
        for (long k = 0; k < spanRows; k++) {
            int from = Math.toIntExact(k * stride * 4);
            dst.put(Math.toIntExact(k * runBytes), stored, from, runBytes);
        }
    }

    public long rows() {
        return rows;
    }

    public long cols() {
        return cols;
    }

    /** The decoded zero point of every (group, row), {@code [groups · rows]} (GPTQ v1's stored zero − 1 corrected). */
    public int[] zeros() {
        return zeros.clone();
    }

    /** The scale of every (group, row), {@code [groups · rows]}, decoded from {@link #dtype()}. */
    public float[] scales() {
        return scales.clone();
    }

    /** The group of every input column ({@code g_idx}, or {@code i / group_size}). */
    public int[] groupOfColumn() {
        return groupOfColumn.clone();
    }

    @Override
    public QuantizedOutput requantizedOutput() {
        throw new UnsupportedOperationException(weightName + ": " + kind() + " quantization needs calibration data");
    }

    @Override
    public String toString() {
        return weightName + " " + describe();
    }
}
