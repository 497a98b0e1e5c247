package org.loramerge.cli;

import static org.loramerge.testutil.TinyModels.bf16;
import static org.loramerge.testutil.TinyModels.q;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.DType;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * Review: a weight whose block absmax values sum past fp32's range (bf16 values near its maximum)
 * has no finite double-quantization offset under bitsandbytes' rule fl32(fl32(S)·fl32(1/n)): quantize
 * --double-quant must refuse it as bad input (exit 3, the weight named, what to do said), not end in an
 * internal error (exit 1).
 */
class DoubleQuantOverflowCliTest {
    @TempDir
    Path dir;

    @Test
    void absmaxSumPastFp32IsBadInputNotAnInternalError() {
        List<Tensor> tensors = new ArrayList<>(TinyModels.tinyLlama());
        double[] huge = new double[64];
        Arrays.fill(huge, 0x1.8p127); // 2 blocks of 32: absmax sum 5.1e38 > Float.MAX_VALUE, mean 2.55e38 representable
        tensors.set(0, new Tensor(q(0) + ".weight", DType.BF16, new long[] {8, 8}, bf16(huge)));
        Path base = TinyModels.writeModel(dir.resolve("base"), tensors);
        Path out = dir.resolve("quantized");
        CliRun.Result r = CliRun.run("quantize", "--base", base.toString(), "--out", out.toString(), "--double-quant", "--blocksize", "32",
                "--quiet");
        CliRun.assertBadInput(r, out, q(0) + ".weight");
    }
}
