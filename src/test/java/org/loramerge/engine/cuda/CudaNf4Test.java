package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.pipeline.QuantizeRunner;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.quant.DoubleQuant;
import org.loramerge.quant.DynamicMap;
import org.loramerge.quant.FourBitCode;
import org.loramerge.quant.ModelQuantizer;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.Nf4Decoder;
import org.loramerge.quant.Nf4Encoder;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.Nf4Vectors;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The NF4 kernels against the reference vectors and the CPU codec, bit for bit, and QLoRA merges
 * on the GPU against the CPU engine's bytes. Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaNf4Test extends OnTheGpu {
    @TempDir
    Path dir;

    /**
     * The 4-bit reference cases, NF4 and FP4, and the same inputs as bitsandbytes quantized and
     * dequantized them itself (src/test/resources/bnb/vectors): the device dequantizes both code books.
     */
    static Stream<Nf4Vectors.Case> allVectors() {
        return Stream.concat(Nf4Vectors.cases().stream(), Nf4Vectors.bitsandbytesCases().stream());
    }

    /**
     * The cases of {@link #allVectors} whose stored codes a quantizer writes today, NF4 and FP4: the device
     * quantizer packs as bitsandbytes 0.47 and later do, so a weight packed by an older one (OR-packed,
     * blocksize 1024 and up) is only read.
     */
    static Stream<Nf4Vectors.Case> quantizable() {
        return allVectors().filter(c -> !c.orPackedPre047());
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("allVectors")
    void dequantizeKernelEqualsTheReference(Nf4Vectors.Case c) throws Exception {
        cuda.device().bindContext();
        int n = (int) c.numElements();
        FloatFormat fmt = FloatFormat.of(c.dtype());
        int size = fmt.sizeInBytes();
        try (Checkpoint ckpt = Checkpoint.open(c.dir()); SafetensorsFile f = c.open(); CudaStream s = new CudaStream()) {
            Nf4Decoder d = Nf4Tensor.open(ckpt, c.name() + ".weight").decoder();
            byte[] expected = Nf4Vectors.bytes(f, c.name() + ".dequant");
            try (DeviceMemory absmax = cuda.device().nf4().decodedAbsmax(null, s, d);
                 DeviceMemory packed = new DeviceMemory(Nf4Codec.packedBytes(n));
                 DeviceMemory out = new DeviceMemory((long) n * size);
                 MappedRegion codes = d.packed(0, n)) {
                if (c.has(".absmax_decoded")) {
                    assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".absmax_decoded"), downloadFloats(s, absmax, (int) c.numBlocks()),
                            "decoded absmax");
                }
                Nf4Kernels.upload(s, packed, codes.bytes());
                cuda.device().nf4().dequant(s, c.code(), fmt, packed.pointer(), 0, n, absmax.pointer(), c.blocksize(), out.pointer());
                assertArrayEquals(expected, download(s, out, (long) n * size), "whole weight");
                // a range starting at an odd element, as a row block of a weight with odd rows does
                int first = 3;
                int count = n - 5;
                try (MappedRegion part = d.packed(first, count); DeviceMemory partOut = new DeviceMemory((long) count * size)) {
                    Nf4Kernels.upload(s, packed, part.bytes());
                    cuda.device().nf4().dequant(s, c.code(), fmt, packed.pointer(), first, count, absmax.pointer(), c.blocksize(),
                            partOut.pointer());
                    byte[] got = download(s, partOut, (long) count * size);
                    for (int i = 0; i < count * size; i++) {
                        assertEquals(expected[first * size + i], got[i], "byte " + i + " of elements [" + first + ", +" + count + ")");
                    }
                }
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizable")
    void quantizeKernelsEqualTheReference(Nf4Vectors.Case c) throws Exception {
        cuda.device().bindContext();
        int n = (int) c.numElements();
        int blocks = (int) c.numBlocks();
        FloatFormat fmt = FloatFormat.of(c.dtype());
        try (Checkpoint ckpt = Checkpoint.open(c.dir()); SafetensorsFile f = c.open(); CudaStream s = new CudaStream()) {
            byte[] input = Nf4Vectors.bytes(f, c.name() + ".input");
            Quantized q = quantizeOnGpu(s, c.code(), fmt, input, n, c.blocksize());
            assertArrayEquals(Nf4Vectors.bytes(f, c.name() + ".weight"), q.packed, "packed codes");
            if (!c.doubleQuant()) {
                assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".weight.absmax"), q.absmax, "absmax");
                return;
            }
            DoubleQuant.Result dq = doubleQuantOnGpu(s, q.absmax);
            float offset = Nf4Tensor.open(ckpt, c.name() + ".weight").state().nested().offset();
            assertEquals(Float.floatToRawIntBits(offset), Float.floatToRawIntBits(dq.offset()), "offset: " + offset + " vs " + dq.offset());
            assertArrayEquals(Nf4Vectors.bytes(f, c.name() + ".weight.absmax"), dq.codes(), "double-quantized absmax");
            assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".weight.nested_absmax"), dq.nestedAbsmax(), "nested absmax");
            assertEquals(blocks, dq.codes().length);
        }
    }

    static Stream<Arguments> randomShapes() {
        return Stream.of(FourBitCode.values()).flatMap(book -> Stream.of(
                Arguments.of(book, DType.BF16, 32, 200_001),
                Arguments.of(book, DType.BF16, 64, 1_000_000),
                Arguments.of(book, DType.F16, 128, 333_333),
                Arguments.of(book, DType.F32, 256, 100_000),
                Arguments.of(book, DType.BF16, 1024, 77_777),
                Arguments.of(book, DType.BF16, 4096, 3 * 4096 + 17)));
    }

    /**
     * The device's approximate reciprocal (what bitsandbytes' 1.0f/absmax is on this GPU) against the
     * table the codec and the kernels emulate it with: equal for every significand on a GPU where
     * bitsandbytes quantizes exactly as loramerge does.
     */
    @Test
    void thisGpusApproximateReciprocalIsTheTableLoramergeEmulates() {
        cuda.device().bindContext();
        try (CudaStream s = new CudaStream()) {
            assertEquals(0, cuda.device().nf4().reciprocalMismatches(s),
                    "this GPU's rcp.approx.ftz.f32 differs from src/main/resources/org/loramerge/quant/rcp_approx_ftz.bits.z; "
                            + "run scripts/device/make-rcp-table.sh and see docs/FORMATS.md §5");
        }
    }

    /**
     * Many blocks of random values, zero blocks and values on the thresholds (NF4's, and FP4's scaled
     * values: FP4_THRESHOLDS): kernels of both code books against Nf4Encoder and DoubleQuant.
     */
    @ParameterizedTest(name = "{0} {1} blocksize {2}, {3} elements")
    @MethodSource("randomShapes")
    void randomWeightsQuantizeAsTheCpuCodec(FourBitCode book, DType dtype, int blocksize, int n) throws Exception {
        cuda.device().bindContext();
        FloatFormat fmt = FloatFormat.of(dtype);
        SplittableRandom rnd = new SplittableRandom(n * 31L + blocksize);
        ByteBuffer in = ByteBuffer.allocate(n * fmt.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        float[] thresholds = book == FourBitCode.NF4 ? Nf4Codec.thresholds() : FP4_THRESHOLDS;
        for (int i = 0; i < n; i++) {
            int block = i / blocksize;
            double v;
            if (block % 17 == 5) {
                v = 0.0; // an all-zero block
            } else if (block % 19 == 7) {
                v = (i % 5 == 0 ? 1e-39 : 3e-38) * (rnd.nextBoolean() ? 1 : -1); // subnormals the kernel flushes, beside small normals
            } else if (block % 23 == 11 && dtype != DType.F16) {
                v = (i % blocksize == 0 ? 2e38 : rnd.nextDouble() * 1e38) * (rnd.nextBoolean() ? 1 : -1); // absmax above 2^126
            } else if (block % 13 == 3 && i % blocksize == 0) {
                v = 1.0; // absmax 1: the next values sit exactly on thresholds
            } else if (block % 13 == 3) {
                v = thresholds[rnd.nextInt(thresholds.length)];
            } else {
                v = Math.exp(rnd.nextDouble() * 4 - 6) * (rnd.nextBoolean() ? 1 : -1) * (1 + block % 7);
            }
            fmt.putBits(in, i, fmt.encode(fmt.round(v)));
        }
        byte[] input = in.array();
        byte[] packed = new byte[(int) Nf4Codec.packedBytes(n)];
        float[] absmax = new float[(int) Nf4Codec.numBlocks(n, blocksize)];
        Nf4Encoder.encodeBlocks(book, ByteBuffer.wrap(input).order(ByteOrder.LITTLE_ENDIAN), fmt, n, blocksize, 0, n, packed, absmax, null, "w");
        try (CudaStream s = new CudaStream()) {
            Quantized q = quantizeOnGpu(s, book, fmt, input, n, blocksize);
            assertArrayEquals(packed, q.packed, "packed codes");
            assertArrayEquals(absmax, q.absmax, "absmax");
            DoubleQuant.Result expected = DoubleQuant.quantize(absmax, absmax.length);
            DoubleQuant.Result got = doubleQuantOnGpu(s, q.absmax);
            assertEquals(Float.floatToRawIntBits(expected.offset()), Float.floatToRawIntBits(got.offset()), "offset");
            assertArrayEquals(expected.codes(), got.codes(), "double-quantized absmax");
            assertArrayEquals(expected.nestedAbsmax(), got.nestedAbsmax(), "nested absmax");
        }
    }

    static Stream<Arguments> qloraCases() {
        List<Arguments> out = new ArrayList<>();
        for (String c : new String[] {"plain_bs32", "dq_bs64"}) {
            for (QuantTarget to : new QuantTarget[] {QuantTarget.BF16, QuantTarget.NF4}) {
                for (int blockBytes : new int[] {Backend.DEFAULT_BLOCK_BYTES, 1024}) {
                    out.add(Arguments.of(c, to, blockBytes));
                }
            }
        }
        return out.stream();
    }

    /** merge --to bf16 and --to nf4 of the golden QLoRA cases: the GPU writes the CPU's bytes and reports the same survival. */
    @ParameterizedTest(name = "{0} --to {1}, blocks of {2} bytes")
    @MethodSource("qloraCases")
    void qloraMergesAreByteIdentical(String name, QuantTarget to, int blockBytes) throws Exception {
        Path caseDir = Path.of("src/test/resources/qlora", name);
        MergeReport[] reports = mergeOnBoth(caseDir.resolve("base"), caseDir.resolve("adapter"), to, blockBytes);
        if (to == QuantTarget.NF4) {
            assertSameSurvival(reports[0], reports[1]);
            assertTrue(reports[0].requantization.codesChanged > 0, "the adapter moved some codes");
        }
    }

    static Stream<Arguments> otherQuantizedBases() {
        return Stream.of(
                Arguments.of("fp8/fine_grained_128", QuantTarget.BF16), Arguments.of("fp8/fine_grained_128", QuantTarget.FP8),
                Arguments.of("fp8/compressed_tensors", QuantTarget.BF16),
                Arguments.of("gptq_awq/gptq_v1_4bit_g32_actorder", QuantTarget.F16),
                Arguments.of("gptq_awq/gptq_v1_4bit_g32_actorder", QuantTarget.NF4),
                Arguments.of("gptq_awq/awq_gemm_4bit_g32", QuantTarget.F16), Arguments.of("gptq_awq/gptq_v2_8bit_one_group", QuantTarget.F16),
                Arguments.of("fp8/fine_grained_tensor", QuantTarget.FP8),
                Arguments.of("gptq_fp8/gptq_v1_4bit_g32_actorder", QuantTarget.FP8), Arguments.of("gptq_fp8/gptq_v2_8bit_g64", QuantTarget.FP8),
                Arguments.of("gptq_fp8/awq_gemm_4bit_g32", QuantTarget.FP8));
    }

    /**
     * FP8, GPTQ and AWQ bases: their blocks are dequantized and merged on the device (kernels/quant.cu),
     * and requantized there (NF4 and FP8 from GPTQ and AWQ, FP8 with its block grid or its one scale); the
     * output must be the CPU engine's, and so must the survival report.
     */
    @ParameterizedTest(name = "{0} --to {1}")
    @MethodSource("otherQuantizedBases")
    void otherQuantizedBasesMergeToTheCpuEnginesBytes(String fixture, QuantTarget to) throws Exception {
        Path caseDir = Path.of("src/test/resources", fixture);
        MergeReport[] reports = mergeOnBoth(caseDir.resolve("base"), caseDir.resolve("adapter"), to, Backend.DEFAULT_BLOCK_BYTES);
        if (!to.isDense()) {
            assertSameSurvival(reports[0], reports[1]);
        }
    }

    static Stream<Arguments> combinedOnQuantizedBases() {
        return Stream.of(
                Arguments.of("fp8/fine_grained_128", QuantTarget.FP8, CombineMethod.CAT),
                Arguments.of("fp8/fine_grained_128", QuantTarget.BF16, CombineMethod.TIES),
                Arguments.of("gptq_awq/gptq_v1_4bit_g32_actorder", QuantTarget.NF4, CombineMethod.LINEAR),
                Arguments.of("gptq_awq/awq_gemm_4bit_g32", QuantTarget.F16, CombineMethod.TASK_ARITHMETIC));
    }

    /**
     * merge --combine on FP8, GPTQ and AWQ bases: the adapter combined with itself (weights 0.7 and
     * 0.4, density 0.5 where the method trims); two factor terms on the same rows fold into one on the
     * device, a dense combination runs on the CPU engine inside the GPU one; the output must be the
     * CPU engine's, survival included.
     */
    @ParameterizedTest(name = "{0} --to {1}, {2}")
    @MethodSource("combinedOnQuantizedBases")
    void combinedAdaptersOnOtherQuantizedBasesMergeToTheCpuEnginesBytes(String fixture, QuantTarget to, CombineMethod method) throws Exception {
        Path caseDir = Path.of("src/test/resources", fixture);
        Combination how = Combination.of(method, 2, List.of(0.7, 0.4), 0.5, Combination.MajoritySign.TOTAL, 1.0, 5, 0, null);
        try (Checkpoint base = Checkpoint.open(caseDir.resolve("base")); LoraAdapter a = LoraAdapter.open(caseDir.resolve("adapter"));
             LoraAdapter b = LoraAdapter.open(caseDir.resolve("adapter"))) {
            MergePlan plan = Planner.plan(base, List.of(a, b), PlanOptions.defaults().withTarget(to), how);
            MergeReport[] reports = mergeOnBoth(plan, caseDir.resolve("base"), caseDir.resolve("adapter"), Backend.DEFAULT_BLOCK_BYTES);
            if (!to.isDense()) {
                assertSameSurvival(reports[0], reports[1]);
            }
        }
    }

    /**
     * Merged values exactly on a BF16 rounding midpoint (W = 1 from NF4 code 15 with absmax 1, ΔW
     * = ±2⁻⁸, ±3·2⁻⁸, −2⁻⁹...): the kernel cannot decide them and lists them, the host settles them
     * (ties to even). q_proj has 1024 of them; every element of up_proj is one, more than the
     * kernel lists (DeviceWorker.AMBIGUOUS_CAPACITY), so the CPU engine merges that block.
     */
    @ParameterizedTest(name = "--to {0}")
    @EnumSource(value = QuantTarget.class, names = {"BF16", "NF4"})
    void tiesOnRoundingMidpointsAreSettledExactly(QuantTarget to) throws Exception {
        int upRows = 512;
        int upCols = 256;
        assertTrue((long) upRows * upCols > DeviceWorker.AMBIGUOUS_CAPACITY);
        double[] qA = new double[64];
        double[] qB = new double[64];
        for (int j = 0; j < 64; j++) {
            qA[j] = j % 4 == 0 ? 1.0 : j % 4 == 1 ? 3.0 : 0.3 + j * 0.01;
        }
        for (int i = 0; i < 64; i++) {
            qB[i] = i % 4 == 0 ? 0x1p-8 : i % 4 == 2 ? -0x1p-9 : 1e-3 * (i + 1);
        }
        double[] upA = new double[upCols];
        double[] upB = new double[upRows];
        java.util.Arrays.fill(upA, 1.0);
        java.util.Arrays.fill(upB, 0x1p-8);
        Path dense = TinyModels.writeModel(dir.resolve("dense"), List.of(
                new TinyModels.Tensor(TinyModels.q(0) + ".weight", DType.BF16, new long[] {64, 64}, ones(64 * 64)),
                new TinyModels.Tensor("model.layers.0.mlp.up_proj.weight", DType.BF16, new long[] {upRows, upCols}, ones(upRows * upCols)),
                TinyModels.bf16Tensor("model.norm.weight", 64)));
        Path base = dir.resolve("nf4");
        try (Checkpoint c = Checkpoint.open(dense); AtomicOutput o = AtomicOutput.create(base, false, List.of(dense))) {
            QuantizeRunner.run(c, o, new ModelQuantizer.Options(64, false), line -> { });
        }
        Path adapter = TinyModels.writeAdapter(dir.resolve("adapter"), TinyModels.loraConfig(1, 1.0, "[\"q_proj\", \"up_proj\"]", ""), List.of(
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + TinyModels.q(0) + ".lora_A.weight", DType.F32, new long[] {1, 64}, TinyModels.f32(qA)),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + TinyModels.q(0) + ".lora_B.weight", DType.F32, new long[] {64, 1}, TinyModels.f32(qB)),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + "model.layers.0.mlp.up_proj.lora_A.weight", DType.F32, new long[] {1, upCols},
                        TinyModels.f32(upA)),
                new TinyModels.Tensor(TinyModels.PEFT_PREFIX + "model.layers.0.mlp.up_proj.lora_B.weight", DType.F32, new long[] {upRows, 1},
                        TinyModels.f32(upB))));
        MergeReport[] reports = mergeOnBoth(base, adapter, to, Backend.DEFAULT_BLOCK_BYTES);
        assertEquals(List.of(1024L, (long) upRows * upCols), reports[1].tensors.stream().map(MergeReport.TensorOutcome::exactlyRounded).toList(),
                "midpoints settled exactly in q_proj and up_proj");
        assertEquals(List.of(0L, 0L), reports[1].tensors.stream().map(MergeReport.TensorOutcome::exactFallbacks).toList(),
                "none needed decimal arithmetic");
        if (to == QuantTarget.NF4) {
            assertSameSurvival(reports[0], reports[1]);
            return;
        }
        try (Checkpoint merged = Checkpoint.open(dir.resolve("gpu"))) {
            String name = TinyModels.q(0) + ".weight";
            byte[] b = Nf4Vectors.bytes(merged.fileOf(name), name);
            ByteBuffer bits = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
            assertEquals(0x3F80, bits.getShort(2 * 0) & 0xffff, "1 + 2^-8 ties to 1");
            assertEquals(0x3F82, bits.getShort(2 * 1) & 0xffff, "1 + 3*2^-8 ties to 1 + 2^-6");
            assertEquals(0x3F80, bits.getShort(2 * (2 * 64)) & 0xffff, "1 - 2^-9 ties to 1");
            assertEquals(0x3F7E, bits.getShort(2 * (2 * 64 + 1)) & 0xffff, "1 - 3*2^-9 ties to 1 - 2^-7");
            String up = "model.layers.0.mlp.up_proj.weight";
            ByteBuffer upBits = ByteBuffer.wrap(Nf4Vectors.bytes(merged.fileOf(up), up)).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < upRows * upCols; i++) {
                assertEquals(0x3F80, upBits.getShort(2 * i) & 0xffff, "up_proj element " + i + ": 1 + 2^-8 ties to 1");
            }
        }
    }

    private static byte[] ones(int n) {
        double[] v = new double[n];
        java.util.Arrays.fill(v, 1.0);
        return TinyModels.bf16(v);
    }

    /**
     * The plan of base + adapter merged to {@code to} by the CPU engine into dir/cpu and by the GPU
     * into dir/gpu; asserts that every file is byte-identical. Returns {cpu report, gpu report}.
     */
    private MergeReport[] mergeOnBoth(Path baseDir, Path adapterDir, QuantTarget to, int blockBytes) throws Exception {
        try (Checkpoint base = Checkpoint.open(baseDir); LoraAdapter adapter = LoraAdapter.open(adapterDir)) {
            return mergeOnBoth(Planner.plan(base, adapter, PlanOptions.defaults().withTarget(to)), baseDir, adapterDir, blockBytes);
        }
    }

    /** {@code plan} merged by the CPU engine into dir/cpu and by the GPU into dir/gpu; every file byte-identical. */
    private MergeReport[] mergeOnBoth(MergePlan plan, Path baseDir, Path adapterDir, int blockBytes) throws Exception {
        Path cpuOut = dir.resolve("cpu");
        Path gpuOut = dir.resolve("gpu");
        MergeRunner.Options options = new MergeRunner.Options(false, blockBytes);
        MergeReport cpuReport;
        MergeReport gpuReport;
        try (CpuBackend cpu = new CpuBackend(2); AtomicOutput o = AtomicOutput.create(cpuOut, false, List.of(baseDir, adapterDir))) {
            cpuReport = MergeRunner.run(plan, cpu, o, options, Progress.silent());
        }
        try (AtomicOutput o = AtomicOutput.create(gpuOut, false, List.of(baseDir, adapterDir))) {
            gpuReport = MergeRunner.run(plan, cuda, o, options, Progress.silent());
        }
        try (Stream<Path> files = Files.list(cpuOut)) {
            for (Path p : files.toList()) {
                assertArrayEquals(Files.readAllBytes(p), Files.readAllBytes(gpuOut.resolve(p.getFileName())),
                        baseDir + ": " + p.getFileName());
            }
        }
        return new MergeReport[] {cpuReport, gpuReport};
    }

    /** The GPU's survival figures: the CPU's counts, and its norms to 1e-9 (summed in another order). */
    static void assertSameSurvival(MergeReport cpuReport, MergeReport gpuReport) {
        MergeReport.Requantization c = cpuReport.requantization;
        MergeReport.Requantization g = gpuReport.requantization;
        assertEquals(c.codes, g.codes);
        assertEquals(c.codesChanged, g.codesChanged);
        assertEquals(c.deltaNorm, g.deltaNorm, 1e-9 * c.deltaNorm);
        assertEquals(c.survivingNorm, g.survivingNorm, 1e-9 * c.survivingNorm);
    }

    private record Quantized(byte[] packed, float[] absmax) {
    }

    /** FP4's decision values (dQuantizeFP4's literals) and their negatives, where a value on one takes the lower magnitude code. */
    private static final float[] FP4_THRESHOLDS = {0.29166667f, 0.583333f, 0.8333333f, 0.4166667f, 0.0859375f, 0.20833333f, 0.00260417f,
        -0.29166667f, -0.583333f, -0.8333333f, -0.4166667f, -0.0859375f, -0.20833333f, -0.00260417f};

    private static Quantized quantizeOnGpu(CudaStream s, FourBitCode book, FloatFormat fmt, byte[] input, int n, int blocksize) {
        int blocks = (int) Nf4Codec.numBlocks(n, blocksize);
        try (DeviceMemory x = new DeviceMemory(input.length);
             DeviceMemory packed = new DeviceMemory(Nf4Codec.packedBytes(n));
             DeviceMemory absmax = new DeviceMemory((long) blocks * Sizeof.FLOAT)) {
            Nf4Kernels.upload(s, x, ByteBuffer.wrap(input));
            // the whole weight in two calls, split on a block boundary, as row blocks are
            long half = Math.max(1, blocks / 2) * (long) blocksize;
            long firstPart = Math.min(half, n);
            cuda.device().nf4().quantize(s, book, fmt, x.pointer(), 0, firstPart, blocksize, packed.pointer(), absmax.pointer());
            if (firstPart < n) {
                cuda.device().nf4().quantize(s, book, fmt, x.at(firstPart * fmt.sizeInBytes()), firstPart, n - firstPart, blocksize,
                        packed.pointer(), absmax.pointer());
            }
            return new Quantized(download(s, packed, Nf4Codec.packedBytes(n)), downloadFloats(s, absmax, blocks));
        }
    }

    private static DoubleQuant.Result doubleQuantOnGpu(CudaStream s, float[] absmax) {
        int blocks = absmax.length;
        int nested = (blocks + 255) / 256;
        try (DeviceMemory a = Nf4Kernels.uploadFloats(null, s, absmax);
             DeviceMemory map = Nf4Kernels.uploadFloats(null, s, DynamicMap.signed());
             DeviceMemory sums = new DeviceMemory(512 * Sizeof.LONG);
             DeviceMemory codes = new DeviceMemory(blocks);
             DeviceMemory nestedAbsmax = new DeviceMemory((long) nested * Sizeof.FLOAT)) {
            JCuda.cudaMemsetAsync(sums.pointer(), 0, 512 * Sizeof.LONG, s.runtime());
            cuda.device().nf4().exponentSums(s, a.pointer(), blocks, sums.pointer());
            long[] bucket = new long[512];
            s.synchronize();
            JCuda.cudaMemcpy(Pointer.to(bucket), sums.pointer(), 512 * Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            assertArrayEquals(DoubleQuant.exponentSums(absmax, blocks), bucket, "exact sums");
            float offset = DoubleQuant.offsetOfSums(bucket, blocks);
            cuda.device().nf4().doubleQuant(s, a.pointer(), blocks, offset, map.pointer(), codes.pointer(), nestedAbsmax.pointer());
            return new DoubleQuant.Result(download(s, codes, blocks), downloadFloats(s, nestedAbsmax, nested), offset);
        }
    }

    private static byte[] download(CudaStream s, DeviceMemory m, long bytes) {
        byte[] out = new byte[Math.toIntExact(bytes)];
        s.synchronize();
        JCuda.cudaMemcpy(Pointer.to(out), m.pointer(), bytes, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        return out;
    }

    private static float[] downloadFloats(CudaStream s, DeviceMemory m, int count) {
        float[] out = new float[count];
        s.synchronize();
        JCuda.cudaMemcpy(Pointer.to(out), m.pointer(), (long) count * Sizeof.FLOAT, cudaMemcpyKind.cudaMemcpyDeviceToHost);
        return out;
    }
}
