package org.loramerge.quant;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The merge engine's path for a QLoRA base: dequantize a weight in row blocks, change it, requantize
 * it in the same row blocks. Row blocks need not align with the quantization blocks.
 */
class Nf4RequantizeTest {

    @Test
    void rowBlockDequantizeMergeRequantizeEqualsTheWholeTensorComputation() throws Exception {
        // a weak change (|ΔW| ≤ 1e-3, against NF4 steps of about 0.1·absmax) is rounded away entirely;
        // a strong one moves codes: the loss users report after requantizing a merged QLoRA model
        assertEquals(0, requantize(1e-3));
        int strong = requantize(3e-2);
        assertTrue(strong > 1000, strong + " bytes changed");
    }

    /** Dequantize, add delta·sin(i), requantize in row blocks; returns how many packed bytes changed. */
    private static int requantize(double delta) throws Exception {
        try (Checkpoint ckpt = Checkpoint.open(Nf4Vectors.dir())) {
            Nf4Tensor t = Nf4Tensor.open(ckpt, "dq_bs32_bf16_nested_partial.weight");
            long[] shape = t.shape();
            int rows = (int) shape[0];
            int cols = (int) shape[1]; // 83: rows end mid-block
            int n = rows * cols;
            FloatFormat fmt = FloatFormat.of(t.dtype());
            Nf4Decoder dec = t.decoder();

            // streamed: 7 rows at a time
            ByteArrayOutputStream packed = new ByteArrayOutputStream();
            Nf4Encoder enc = new Nf4Encoder(n, t.blocksize(), b -> packed.write(b.array(), b.arrayOffset() + b.position(), b.remaining()),
                    null, t.weightName());
            double[] w = new double[7 * cols];
            float[] merged = new float[7 * cols];
            float[] all = new float[n];
            for (int r0 = 0; r0 < rows; r0 += 7) {
                int k = Math.min(7, rows - r0);
                dec.dequantizeRounded((long) r0 * cols, k * cols, w, 0);
                for (int i = 0; i < k * cols; i++) {
                    // W' = W + ΔW, rounded once to the weight's dtype (what PEFT requantizes)
                    merged[i] = (float) fmt.round(w[i] + delta * Math.sin(r0 * cols + i));
                }
                enc.accept(merged, 0, k * cols);
                System.arraycopy(merged, 0, all, r0 * cols, k * cols);
            }
            float[] absmax = enc.finish();
            QuantState state = QuantState.of(t.blocksize(), t.dtype(), shape,
                    new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, DoubleQuant.offset(absmax, absmax.length)));
            List<ByteBuffer> tail = Nf4Tensor.tail(state, absmax);
            assertEquals(Nf4Tensor.layout(t.weightName(), state).size() - 1, tail.size());

            // whole tensor at once, through the static block API
            byte[] codes = new byte[n];
            float[] absmax2 = new float[absmax.length];
            for (int b = 0; b < absmax2.length; b++) {
                int off = b * t.blocksize();
                absmax2[b] = Nf4Codec.quantizeBlock(all, off, Math.min(t.blocksize(), n - off), codes, off);
            }
            byte[] packed2 = new byte[(n + 1) / 2];
            Nf4Codec.pack(codes, 0, n, packed2, 0);
            assertArrayEquals(packed2, packed.toByteArray());
            assertArrayEquals(absmax2, absmax);
            assertArrayEquals(DoubleQuant.quantize(absmax2, absmax2.length).codes(), tail.get(0).array());

            // the requantized weight differs from the original where the change moved values across thresholds
            byte[] before = Nf4Vectors.bytes(ckpt.fileOf(t.weightName()), t.weightName());
            int changed = 0;
            for (int i = 0; i < before.length; i++) {
                changed += before[i] != packed2[i] ? 1 : 0;
            }
            List<String> names = new ArrayList<>();
            Nf4Tensor.layout(t.weightName(), state).forEach(e -> names.add(e.name()));
            assertEquals(t.tensorNames(), names);
            return changed;
        }
    }
}
