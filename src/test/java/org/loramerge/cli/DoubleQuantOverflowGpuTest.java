package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;
import static org.loramerge.testutil.TinyModels.q;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.select.Backends;
import org.loramerge.format.DType;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * A merge --to nf4 into a double-quantized base whose merged block absmax values sum past fp32's
 * range (no finite double-quantization offset under bitsandbytes' rule): both engines refuse it
 * with the same typed error (exit 3, the weight and what to do named, nothing left behind); the GPU
 * engine used to end in an internal error (exit 1).
 */
@Tag("gpu")
class DoubleQuantOverflowGpuTest {
    @TempDir
    Path dir;

    @Test
    void mergedAbsmaxSummingPastFp32IsTheSameBadInputOnBothEngines() {
        assumeTrue(Backends.cudaDeviceCount() > 0, "no CUDA device here");
        Path dense = TinyModels.writeTinyLlama(dir.resolve("dense"));
        Path base = dir.resolve("nf4");
        CliRun.Result quantized = CliRun.run("quantize", "--base", dense.toString(), "--out", base.toString(), "--double-quant",
                "--blocksize", "32", "--quiet");
        assertEquals(0, quantized.code(), quantized.err());
        // B·A = 1.5·2^127 everywhere on q_proj of layer 0: its two blocks of 32 have absmax near that, which sum past fp32
        double[] a = new double[8];
        double[] b = new double[8];
        Arrays.fill(a, 0x1p63);
        Arrays.fill(b, 0x1.8p64);
        Path adapter = TinyModels.writeAdapter(dir.resolve("adapter"), TinyModels.loraConfig(1, 1.0, "[\"q_proj\"]", ""), List.of(
                new Tensor(TinyModels.PEFT_PREFIX + q(0) + ".lora_A.weight", DType.F32, new long[] {1, 8}, TinyModels.f32(a)),
                new Tensor(TinyModels.PEFT_PREFIX + q(0) + ".lora_B.weight", DType.F32, new long[] {8, 1}, TinyModels.f32(b))));
        String[] errors = new String[2];
        int k = 0;
        for (String device : new String[] {"cpu", "cuda"}) {
            Path out = dir.resolve("out-" + device);
            CliRun.Result r = CliRun.run("merge", "--base", base.toString(), "--adapter", adapter.toString(), "--out", out.toString(),
                    "--to", "nf4", "--device", device, "--quiet");
            CliRun.assertBadInput(r, out, q(0) + ".weight");
            errors[k++] = r.err();
        }
        assertEquals(errors[0], errors[1], "the GPU engine's refusal is the CPU engine's");
    }
}
