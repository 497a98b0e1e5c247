package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import jcuda.Pointer;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

/**
 * The device dequantization of FP8, LLM.int8, GPTQ and AWQ weights (kernels/quant.cu,
 * {@link DeviceDequantizer}) against their CPU codecs, bit for bit, and merges on such bases on the
 * GPU against the CPU engine's bytes. Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaQuantTest extends OnTheGpu {
    @TempDir
    Path dir;

    static Stream<RandomQuantizedWeights.Spec> weights() {
        return RandomQuantizedWeights.specs().stream();
    }

    /**
     * Random weights of every layout and scale scheme (NaN and infinite FP8 codes, zero, negative,
     * subnormal and overflowing scales, act-order g_idx, groups that end inside a thread's run of
     * elements): dequantized on the device whole, in blocks of 7 rows (AWQ blocks that start and
     * end inside a word of 8 rows) and row by row, each equal to the CPU codec's bytes.
     */
    @ParameterizedTest(name = "{0}")
    @MethodSource("weights")
    void deviceDequantizationIsTheCpuCodecsBitForBit(RandomQuantizedWeights.Spec spec) throws Exception {
        cuda.device().bindContext();
        Path model = RandomQuantizedWeights.write(dir.resolve("model"), spec);
        try (Checkpoint c = Checkpoint.open(model)) {
            QuantizedWeight w = WeightFormats.detect(c).weight(RandomQuantizedWeights.WEIGHT);
            assertNotNull(w, spec + " was not read as a quantized weight");
            int rows = spec.rows();
            int cols = spec.cols();
            int size = w.dtype().sizeInBytes();
            ByteBuffer expected = ByteBuffer.allocate(rows * cols * size).order(ByteOrder.LITTLE_ENDIAN);
            w.dequantizeTo(0, rows * cols, expected);
            try (DeviceDequantizer d = DeviceDequantizer.of(cuda.device(), w, rows, cols, cuda.device().blockBytes())) {
                assertNotNull(d, spec + " has no device dequantizer");
                for (int block : new int[] {rows, 7, 1}) {
                    for (int row0 = 0; row0 < rows; row0 += block) {
                        int n = Math.min(block, rows - row0);
                        byte[] got = dequantizeOnDevice(w, d, row0, n);
                        byte[] want = new byte[n * cols * size];
                        expected.get(row0 * cols * size, want);
                        assertArrayEquals(want, got, spec + ": rows [" + row0 + ", +" + n + ")");
                    }
                }
            }
        }
    }

    /** Rows [row0, row0 + n) as the merge loads them: the stored codes read, staged, uploaded and dequantized on the device. */
    private static byte[] dequantizeOnDevice(QuantizedWeight w, DeviceDequantizer d, int row0, int n) throws Exception {
        long cols = d.cols;
        long outBytes = n * cols * d.format.sizeInBytes();
        long staged = d.stagedBytes(row0, n);
        ByteBuffer host = ByteBuffer.allocateDirect((int) staged).order(ByteOrder.LITTLE_ENDIAN);
        try (TensorSource.Bytes stored = TensorSource.dequantized(w).readStored(row0 * cols, (int) (n * cols))) {
            d.stage(stored.bytes(), row0, n, host);
        }
        try (CudaStream s = new CudaStream(); DeviceMemory in = new DeviceMemory(staged); DeviceMemory out = new DeviceMemory(outBytes)) {
            JCuda.cudaMemcpy(in.pointer(), Pointer.to(host), staged, cudaMemcpyKind.cudaMemcpyHostToDevice);
            d.dequantize(s, in.pointer(), row0, n, out.pointer());
            s.synchronize();
            byte[] got = new byte[(int) outBytes];
            JCuda.cudaMemcpy(Pointer.to(got), out.pointer(), outBytes, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            return got;
        }
    }

    static Stream<Arguments> merges() {
        List<Arguments> out = new ArrayList<>();
        for (RandomQuantizedWeights.Spec spec : RandomQuantizedWeights.specs()) {
            // blocks of 7 rows of F32 (14 of 16-bit values): most of them start inside an AWQ word of 8 rows
            out.add(Arguments.of(spec, spec.kind().startsWith("gptq") || spec.kind().equals("awq") ? QuantTarget.F16 : QuantTarget.BF16,
                    7 * spec.cols() * 4));
        }
        out.add(Arguments.of(RandomQuantizedWeights.specs().get(0), QuantTarget.F32, 1 << 20));
        return out.stream();
    }

    /**
     * merge of a LoRA adapter into each random weight on the GPU, whose engine dequantizes it on the
     * device (its merge reads the stored codes): the output is the CPU engine's, byte for byte.
     */
    @ParameterizedTest(name = "{0} --to {1}, blocks of {2} bytes")
    @MethodSource("merges")
    void mergesOnQuantizedBasesDequantizeOnTheDeviceAndWriteTheCpuEnginesBytes(RandomQuantizedWeights.Spec spec, QuantTarget to, int blockBytes)
            throws Exception {
        Path base = RandomQuantizedWeights.write(dir.resolve("base"), spec);
        int r = 4;
        String module = RandomQuantizedWeights.WEIGHT.substring(0, RandomQuantizedWeights.WEIGHT.length() - ".weight".length());
        Path adapterDir = TinyModels.writeAdapter(dir.resolve("adapter"), TinyModels.loraConfig(r, 8, "[\"up_proj\"]", ""), List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + module + ".lora_A.weight", DType.F32, new long[] {r, spec.cols()},
                        TinyModels.f32(TinyModels.values(r * spec.cols(), 3))),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + module + ".lora_B.weight", DType.F32, new long[] {spec.rows(), r},
                        TinyModels.f32(TinyModels.values(spec.rows() * r, 5)))));
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter adapter = LoraAdapter.open(adapterDir)) {
            MergePlan plan = Planner.plan(c, adapter, PlanOptions.defaults().withTarget(to));
            OutputTensor t = plan.tensors().stream().filter(o -> o.name().equals(RandomQuantizedWeights.WEIGHT)).findFirst().orElseThrow();
            try (TensorMerge m = cuda.openMerge(TensorJob.prepare(t))) {
                assertEquals(TensorSource.Form.STORED, m.input(), spec + ": the GPU engine reads the stored codes and dequantizes them itself");
            }
            Path cpuOut = dir.resolve("cpu");
            Path gpuOut = dir.resolve("gpu");
            // the random scales overflow and the FP8 NaN codes stay NaN: both engines must write them alike
            MergeRunner.Options options = new MergeRunner.Options(true, blockBytes);
            try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(base, adapterDir))) {
                MergeRunner.run(plan, cpu, o, options, Progress.silent());
            }
            try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(base, adapterDir))) {
                MergeRunner.run(plan, cuda, o, options, Progress.silent());
            }
            try (Stream<Path> files = Files.list(cpuOut)) {
                for (Path p : files.toList()) {
                    assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())), spec + ": " + p.getFileName());
                }
            }
        }
    }
}
