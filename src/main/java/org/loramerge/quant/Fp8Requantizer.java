package org.loramerge.quant;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;

/**
 * Requantizes a merged FP8 weight of transformers' fine-grained layout as transformers' own
 * {@code Fp8Quantize} does when it saves a model loaded from FP8 (integrations/finegrained_fp8.py
 * _quantize_one), per block of the base's scale grid (a 128x128 block, or the whole weight):
 *
 * <pre>
 * amax  = max |x| over the block (fp32 of the merged values in the model's dtype)
 * s     = fl32(fl32(1 / amax) · 448), or 1 when amax is 0;   weight_scale_inv = fl32(1 / s)
 * code  = e4m3(clamp(fl32(x · s), -448, 448))    (torch's cast: round to nearest even)
 * </pre>
 *
 * The scale is torch's {@code 448 / max_abs}, a Python number over a tensor, which torch computes as
 * {@code max_abs.reciprocal() * 448} (torch/_tensor.py {@code __rdiv__}): two roundings, which give another
 * float than fl32(448 / amax) for many amax (the MoE fixtures' FP8 cases hold such blocks).
 *
 * A block never straddles two ranges: ranges are whole rows of blocks ({@link #blockElements}), so the
 * codes of a range are final when it is encoded and are written at their offset
 * ({@link #codesOffset}); only the scales wait for {@link #tail}. Survival: D = deq(Q(X)) − deq(Q(W)) with deq as {@link Fp8Weight} dequantizes,
 * measured per range as it is encoded.
 */
final class Fp8Requantizer implements Requantizer {
    private final Fp8Weight base;
    private final long rows;
    private final long cols;
    private final int blockRows;
    private final int blockCols;
    private final long gridCols;
    private final FloatFormat format;
    private final float[] scaleInv;
    private final ByteCodes pending;
    private final ConcurrentHashMap<Integer, Change> changes = new ConcurrentHashMap<>();

    Fp8Requantizer(Fp8Weight base) {
        this.base = base;
        this.pending = new ByteCodes(base.weightName());
        this.rows = base.rows();
        this.cols = base.cols();
        boolean tensor = base.scheme() == Fp8Weight.Scheme.TENSOR;
        this.blockRows = tensor ? (int) rows : base.blockRows();
        this.blockCols = tensor ? (int) cols : base.blockCols();
        this.gridCols = (cols + blockCols - 1) / blockCols;
        this.format = FloatFormat.of(base.dtype());
        this.scaleInv = new float[Math.toIntExact(((rows + blockRows - 1) / blockRows) * gridCols)];
    }

    @Override
    public int blockElements() {
        return Math.toIntExact(blockRows * cols);
    }

    /** Per block of the range: its inverse scale and codes; the change sums of the range. */
    @Override
    public void encode(long firstElement, int count, ByteBuffer merged, ByteBuffer w, double[] delta) throws QuantException {
        long row0 = firstElement / cols;
        int n = (int) (count / cols);
        byte[] codes = new byte[count];
        byte[] codesW = new byte[count];
        long changed = 0;
        double sumSq = 0;
        double dot = 0;
        double d2 = 0;
        for (long br = row0; br < row0 + n; br += blockRows) {
            int h = (int) Math.min(blockRows, row0 + n - br);
            for (long bc = 0; bc < cols; bc += blockCols) {
                int wdt = (int) Math.min(blockCols, cols - bc);
                float ax = 0;
                float aw = 0;
                for (int r = 0; r < h; r++) {
                    for (int c = 0; c < wdt; c++) {
                        int i = (int) ((br - row0 + r) * cols + bc + c);
                        float x = (float) format.decode(format.bitsAt(merged, i));
                        if (!Float.isFinite(x)) {
                            throw new QuantException(QuantException.Reason.NON_FINITE, base.file().path(), base.weightName(), "element "
                                    + (firstElement + i) + " is " + x + "; FP8 cannot represent it and it would poison its block's scale");
                        }
                        ax = Math.max(ax, Math.abs(x));
                        aw = Math.max(aw, Math.abs((float) format.decode(format.bitsAt(w, i))));
                    }
                }
                float sx = ax > 0 ? (1f / ax) * Fp8Codec.E4M3_MAX : 1f;
                float sw = aw > 0 ? (1f / aw) * Fp8Codec.E4M3_MAX : 1f;
                float invX = 1f / sx;
                float invW = 1f / sw;
                scaleInv[(int) ((br / blockRows) * gridCols + bc / blockCols)] = invX;
                for (int r = 0; r < h; r++) {
                    for (int c = 0; c < wdt; c++) {
                        int i = (int) ((br - row0 + r) * cols + bc + c);
                        int qx = quantize((float) format.decode(format.bitsAt(merged, i)), sx);
                        int qw = quantize((float) format.decode(format.bitsAt(w, i)), sw);
                        codes[i] = (byte) qx;
                        codesW[i] = (byte) qw;
                        double d = dequantize(qx, invX) - dequantize(qw, invW);
                        changed += qx != qw ? 1 : 0;
                        sumSq += d * d;
                        dot += d * delta[i];
                        d2 += delta[i] * delta[i];
                    }
                }
            }
        }
        pending.put(firstElement, codes);
        changes.put((int) (firstElement / blockElements()), new Change(changed, sumSq, dot, d2));
    }

    private static int quantize(float x, float s) {
        float scaled = x * s;
        return Fp8Codec.encodeE4M3(Math.max(-Fp8Codec.E4M3_MAX, Math.min(Fp8Codec.E4M3_MAX, scaled)));
    }

    /** The value the dequantized model holds: round_dtype(fl32(code · inv)), as {@link Fp8Weight#value}. */
    private double dequantize(int code, float inv) {
        return format.round((double) (float) ((double) Fp8Codec.decodeE4M3(code) * inv));
    }

    @Override
    public long codesOffset(long firstElement) {
        return ByteCodes.offset(firstElement);
    }

    @Override
    public ByteBuffer codes(long firstElement, int count) {
        return pending.take(firstElement, count);
    }

    @Override
    public void finish() {
    }

    /** The scales (the base's scale tensor: its name, dtype F32 and shape), then any other tensor of the group, copied. */
    @Override
    public List<ByteBuffer> tail() {
        List<ByteBuffer> out = new ArrayList<>();
        out.add(Nf4Tensor.floats(scaleInv));
        for (Fp8Weight.Part p : base.extras()) {
            try {
                out.add(p.file().readAll(p.info()));
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read " + p.info().name() + " of " + p.file().path(), e);
            }
        }
        return out;
    }

    @Override
    public int chunks() {
        return Math.toIntExact((rows + blockRows - 1) / blockRows);
    }

    @Override
    public Change measure(int chunk) {
        return changes.getOrDefault(chunk, Change.NONE);
    }

    /** The dtype the requantized weight dequantizes to. */
    DType dtype() {
        return base.dtype();
    }
}
