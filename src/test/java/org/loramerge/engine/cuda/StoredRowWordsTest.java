package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.PackedIntWeight;
import org.loramerge.quant.WeightFormats;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * The words a GPTQ or AWQ row block sends to the device (PackedIntWeight#storedCodes, then
 * #gatherRowWords), read in the layout kernels/quant.cu's gptq_dequant and awq_dequant document,
 * decode to the CPU codec's values for every row of every block: what the device kernels index is
 * checked here on any machine, their arithmetic on the GPU (CudaQuantTest).
 */
class StoredRowWordsTest {
    @TempDir
    Path dir;

    static Stream<RandomQuantizedWeights.Spec> packed() {
        return RandomQuantizedWeights.specs().stream().filter(s -> s.kind().startsWith("gptq") || s.kind().equals("awq"));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("packed")
    void gatheredRowWordsDecodeToTheCpuCodecsValuesInEveryRowBlock(RandomQuantizedWeights.Spec spec) throws Exception {
        try (Checkpoint c = Checkpoint.open(RandomQuantizedWeights.write(dir.resolve("m"), spec))) {
            PackedIntWeight w = (PackedIntWeight) WeightFormats.detect(c).weight(RandomQuantizedWeights.WEIGHT);
            int rows = spec.rows();
            int cols = spec.cols();
            FloatFormat f = FloatFormat.of(w.dtype());
            ByteBuffer expected = ByteBuffer.allocate(rows * cols * f.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
            w.dequantizeTo(0, rows * cols, expected);
            int[] zeros = w.zeros();
            float[] scales = w.scales();
            int[] groups = w.groupOfColumn();
            for (int block : new int[] {rows, 8, 7, 3, 1}) {
                for (int row0 = 0; row0 < rows; row0 += block) {
                    int n = Math.min(block, rows - row0);
                    ByteBuffer words = ByteBuffer.allocate(Math.toIntExact(w.rowWords(row0, n) * 4)).order(ByteOrder.LITTLE_ENDIAN);
                    try (TensorSource.Bytes stored = TensorSource.dequantized(w).readStored((long) row0 * cols, n * cols)) {
                        w.gatherRowWords(stored.bytes(), row0, n, words);
                    }
                    for (int o = 0; o < n; o++) {
                        int row = row0 + o;
                        for (int i = 0; i < cols; i++) {
                            int q;
                            if (w.packing() == PackedIntWeight.Packing.AWQ_GEMM) {
                                int wordCols = (row0 + n + 7) / 8 - row0 / 8;
                                int word = words.getInt(4 * (i * wordCols + (row / 8 - row0 / 8)));
                                int c8 = row & 7;
                                q = (word >>> (4 * ((c8 >> 1) + 4 * (c8 & 1)))) & 15;
                            } else {
                                int perWord = 32 / w.bits();
                                int word = words.getInt(4 * ((i / perWord) * n + o));
                                q = (word >>> ((i % perWord) * w.bits())) & ((1 << w.bits()) - 1);
                            }
                            int k = groups[i] * rows + row;
                            int bits = f.encode(f.round((double) (q - zeros[k]) * scales[k]));
                            assertEquals(f.bitsAt(expected, (long) row * cols + i), bits, spec + ": row " + row + " column " + i + " in rows ["
                                    + row0 + ", +" + n + ")");
                        }
                    }
                }
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("packed")
    void storedCodesOfAPartialRowAreRefused(RandomQuantizedWeights.Spec spec) throws Exception {
        try (Checkpoint c = Checkpoint.open(RandomQuantizedWeights.write(dir.resolve("m"), spec))) {
            PackedIntWeight w = (PackedIntWeight) WeightFormats.detect(c).weight(RandomQuantizedWeights.WEIGHT);
            assertThrows(IllegalArgumentException.class, () -> w.storedCodes(1, spec.cols()));
        }
    }
}
