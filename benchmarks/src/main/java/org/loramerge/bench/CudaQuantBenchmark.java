package org.loramerge.bench;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;
import jcuda.Pointer;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.QuantizeOptions;
import org.loramerge.engine.Backend;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.cuda.CudaDevice;
import org.loramerge.engine.cuda.DeviceDequantizer;
import org.loramerge.engine.cuda.DeviceFactors;
import org.loramerge.engine.cuda.DeviceMemory;
import org.loramerge.engine.cuda.DeviceWorker;
import org.loramerge.engine.cuda.PinnedMemory;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.Nf4Output;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.Requantizer;
import org.loramerge.quant.WeightFormats;
import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Fork;
import org.openjdk.jmh.annotations.Level;
import org.openjdk.jmh.annotations.Measurement;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.annotations.TearDown;
import org.openjdk.jmh.annotations.Warmup;

/**
 * A quantized weight in each format besides NF4 (bitsandbytes FP4 and LLM.int8, transformers'
 * fine-grained FP8, GPTQ, AWQ) on the GPU engine: the device dequantization kernel of the format
 * ({@link DeviceDequantizer}, kernels/quant.cu; FP4 in kernels/nf4.cu) over the whole weight with
 * its codes already on the device ({@link #dequantizeOnDevice}, to compare with
 * {@link CudaCopyBenchmark#deviceToDevice} run beside it), and one streaming block as the engine
 * merges it ({@link #mergeBlockToBf16}: stored codes staged, uploaded, dequantized, merged). For
 * comparison, the format's host codec on the same block ({@link #dequantizeOnHost}), which the
 * engine used before these kernels, and the format's requantizing codec on the host
 * ({@code requantizeOnHost}), which the GPU engine ran for {@code --to int8|fp8} before the device
 * kernels of {@link #requantizeOnDevice}, and for {@code --to fp4} and {@code --to nf4} from GPTQ/AWQ
 * before kernels/nf4.cu's fp4_requant and nf4_requant took those ({@code CudaBackend.requantizedOn}).
 *
 * <p>Each format's weight is {@code shape} ({@code [out, in]}) with random codes and scales written
 * straight into its layout (FP4 by {@link LoraMerge#quantize} from random BF16 values, with double
 * quantization); the block is its first {@code blockRows} rows. {@link JmhTable} gives GB/s of W counted as BF16 (2 bytes
 * an element, as for the NF4 benchmarks: the 16-bit output a kernel writes), whatever the dtype the
 * format dequantizes to (F32 for int8, which so writes twice that; F16 for GPTQ and AWQ, BF16 for
 * FP8 and FP4), of the block, or of the whole weight for {@link #dequantizeOnDevice}.
 */
@State(Scope.Benchmark)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.MILLISECONDS)
@Warmup(iterations = 3, time = 1)
@Measurement(iterations = 5, time = 1)
@Fork(value = 2, jvmArgs = {"-Xmx8g"})
public class CudaQuantBenchmark {
    static final String WEIGHT = "model.layers.0.mlp.up_proj.weight";
    static final int GROUP = 128;

    @Param({"fp4", "int8", "fp8", "gptq", "awq"})
    public String format;

    @Param({"11008x4096"})
    public String shape;

    /** 512 rows of 4096 columns: one 8 MiB block of the pipeline (Backend.DEFAULT_BLOCK_BYTES) in F32, half of one in BF16. */
    @Param({"512"})
    public int blockRows;

    @Param({"16"})
    public int rank;

    private Path dir;
    private int rows;
    private int cols;
    private int count;
    private Checkpoint checkpoint;
    private QuantizedWeight weight;
    private FloatFormat dequantized;
    private final FloatFormat out = FloatFormat.of(DType.BF16);
    private CudaDevice device;
    private DeviceWorker worker;
    private DeviceFactors factors;
    private TensorJob job;
    private PinnedMemory values;
    private PinnedMemory merged;
    private Requantizer requantizer;
    private ByteBuffer baseBlock;
    private ByteBuffer mergedBlock;
    private double[] delta;
    private DeviceDequantizer dequantizer;
    /** The whole weight's codes, staged as the kernel reads them, on the device. */
    private DeviceMemory stagedWeight;
    /** The whole weight dequantized. */
    private DeviceMemory dequantizedWeight;
    /**
     * For {@link #requantizeOnDevice} (int8, fp8): the merged X (a copy of the dequantized weight, a buffer of its own as in the
     * pipeline, so that the kernel reads X and W from memory), P of the whole weight (zeros), its codes, scales and sums; else null.
     */
    private DeviceMemory mergedWeight;
    private DeviceMemory product;
    private DeviceMemory codes;
    private DeviceMemory scales;
    private DeviceMemory sums;

    @Setup(Level.Trial)
    public void setUp() throws Exception {
        prepareHost();
        device = CudaDevice.open(0, Backend.DEFAULT_BLOCK_BYTES, 1);
        worker = device.worker();
        factors = new DeviceFactors(job.terms().get(0), null);
        values = new PinnedMemory((long) count * dequantized.sizeInBytes());
        merged = new PinnedMemory((long) count * out.sizeInBytes());
        // a limit of a whole weight: the device dequantizer of any layout
        dequantizer = DeviceDequantizer.of(device, weight, rows, cols, Integer.MAX_VALUE);
        long staged = dequantizer.stagedBytes(0, rows);
        ByteBuffer host = ByteBuffer.allocateDirect(Math.toIntExact(staged)).order(ByteOrder.LITTLE_ENDIAN);
        try (TensorSource.Bytes stored = TensorSource.dequantized(weight).readStored(0, rows * cols)) {
            dequantizer.stage(stored.bytes(), 0, rows, host);
        }
        stagedWeight = new DeviceMemory(staged);
        dequantizedWeight = new DeviceMemory((long) rows * cols * dequantized.sizeInBytes());
        JCuda.cudaMemcpy(stagedWeight.pointer(), Pointer.to(host), staged, cudaMemcpyKind.cudaMemcpyHostToDevice);
        if (format.equals("int8") || format.equals("fp8")) {
            dequantizer.dequantize(worker.stream(), stagedWeight.pointer(), 0, rows, dequantizedWeight.pointer());
            worker.stream().synchronize();
            // int8: a row a block; fp8: 128 x 128 blocks, or (requantizeGroupsOnDevice, more of them) 1 x 128 groups
            long blocks = format.equals("int8") ? rows : (long) rows * ((cols + 127) / 128);
            mergedWeight = new DeviceMemory((long) rows * cols * dequantized.sizeInBytes());
            JCuda.cudaMemcpy(mergedWeight.pointer(), dequantizedWeight.pointer(), (long) rows * cols * dequantized.sizeInBytes(),
                    cudaMemcpyKind.cudaMemcpyDeviceToDevice);
            product = new DeviceMemory((long) rows * cols * Double.BYTES);
            JCuda.cudaMemset(product.pointer(), 0, (long) rows * cols * Double.BYTES);
            codes = new DeviceMemory((long) rows * cols);
            scales = new DeviceMemory(blocks * Float.BYTES);
            sums = new DeviceMemory(5 * blocks * Double.BYTES);
        }
    }

    /** The weight, its merge job and the requantizer's inputs: everything but the device (so it can be tried where none is). */
    void prepareHost() throws Exception {
        int[] s = Synthetic.shape(shape);
        rows = s[0];
        cols = s[1];
        count = blockRows * cols;
        dir = Files.createTempDirectory("lm-bench-quant");
        Path model = dir.resolve("q");
        if (format.equals("fp4")) {
            Synthetic.writeModel(dir.resolve("dense"), 1, rows, cols, rank);
            LoraMerge.quantize(dir.resolve("dense/base"), model, QuantizeOptions.defaults().withQuantType("fp4").withDoubleQuant(true));
        } else {
            writeQuantized(model, format, rows, cols);
        }
        checkpoint = Checkpoint.open(model);
        weight = WeightFormats.detect(checkpoint).weight(WEIGHT);
        if (weight == null) {
            throw new IllegalStateException(format + ": " + WEIGHT + " was not read as a quantized weight");
        }
        dequantized = FloatFormat.of(weight.dtype());
        // the merge's factors: a dense twin of the weight's shape and dtype with its LoRA pair
        try (SafetensorsFile f = Synthetic.write(dir.resolve("w.safetensors"), rows, cols, rank, weight.dtype())) {
            job = TensorJob.prepare(Synthetic.job(f, rank));
        }
        // the requantizer's inputs: W of the block, X = W + ΔW rounded, ΔW small against W
        requantizer = (format.equals("gptq") || format.equals("awq")
                ? Nf4Output.forDense(weight.dtype(), weight.shape(), 64, false) : weight.requantizedOutput()).requantizer(weight);
        baseBlock = ByteBuffer.allocateDirect(count * dequantized.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        weight.dequantizeTo(0, count, baseBlock);
        mergedBlock = ByteBuffer.allocateDirect(count * dequantized.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        delta = new double[count];
        SplittableRandom rnd = new SplittableRandom(count);
        for (int i = 0; i < count; i++) {
            double w = dequantized.decode(dequantized.bitsAt(baseBlock, i));
            double x = dequantized.round(w + 3e-3 * (rnd.nextDouble() - 0.5));
            dequantized.putBits(mergedBlock, i, dequantized.encode(x));
            delta[i] = x - w;
        }
    }

    /** The format's codec on the host, one thread: the block's codes to W in the dequantized dtype. */
    @Benchmark
    public ByteBuffer dequantizeOnHost() throws IOException {
        ByteBuffer b = values.buffer().order(ByteOrder.LITTLE_ENDIAN);
        weight.dequantizeTo(0, count, b);
        return b;
    }

    /*
     * The kernel runs REPEAT times back to back per invocation and the time is per run
     * (@OperationsPerInvocation): the device's throughput, without the host's launch-and-wait round
     * trip, which the pipeline hides behind its other streams.
     */
    static final int REPEAT = 10;

    /**
     * The format's device kernel over the whole weight, its codes already on the device: reads
     * the codes (and the scales, zeros, g_idx it indexes), writes W in the dequantized dtype.
     */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void dequantizeOnDevice() {
        for (int i = 0; i < REPEAT; i++) {
            dequantizer.dequantize(worker.stream(), stagedWeight.pointer(), 0, rows, dequantizedWeight.pointer());
        }
        worker.stream().synchronize();
    }

    /**
     * A block of {@code merge --to bf16} as the GPU engine runs it for this format, one thread:
     * its stored codes mapped and staged into page-locked memory, uploaded and dequantized on the
     * device, merged and rounded exactly there, the BF16 result downloaded.
     */
    @Benchmark
    public void mergeBlockToBf16() throws IOException {
        try (TensorSource.Bytes stored = TensorSource.dequantized(weight).readStored(0, count)) {
            worker.loadStored(dequantizer, stored.bytes(), 0, blockRows);
        }
        worker.mergeRoundExactly(factors, dequantized, out, 0, blockRows, cols, job.boundK());
        worker.copyOutputTo(merged.buffer(), (long) count * out.sizeInBytes());
        worker.synchronize();
    }

    /**
     * The requantization kernel of {@code merge --to int8|fp8} over the whole weight on the device
     * (kernels/quant.cu int8_requant, fp8_requant with 128 x 128 blocks): reads X and W (two buffers
     * holding the dequantized weight) and P (fp64), writes the codes, the scales and each block's survival
     * sums. Only int8 and fp8 have it here (the 4-bit outputs, FP4 and NF4 from GPTQ/AWQ, requantize
     * with kernels/nf4.cu, whose requantization kernel CudaNf4Benchmark times): run it with
     * {@code -p format=int8,fp8}, as gpu-run.sh does; the other formats refuse it rather than time an
     * empty method.
     */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void requantizeOnDevice() {
        if (product == null) {
            throw new IllegalStateException("requantizeOnDevice: " + format + " has no device requantization here; run it with -p format=int8,fp8");
        }
        for (int i = 0; i < REPEAT; i++) {
            if (format.equals("int8")) {
                device.quant().int8Requant(worker.stream(), mergedWeight.pointer(), dequantizedWeight.pointer(), product.pointer(), 0, rows, cols,
                        codes.pointer(), scales.pointer(), sums.pointer());
            } else {
                device.quant().fp8Requant(worker.stream(), dequantized, mergedWeight.pointer(), dequantizedWeight.pointer(), product.pointer(), 0,
                        rows, cols, 128, 128, (cols + 127) / 128, codes.pointer(), scales.pointer(), sums.pointer());
            }
        }
        worker.stream().synchronize();
    }

    /**
     * {@link #requantizeOnDevice} of the FP8 weight with a scale per group of 128 columns of a row (a transformers FP8
     * weight whose {@code weight_block_size} is [1, 128]; kernels/quant.cu fp8_requant_groups) instead of 128 x 128 blocks:
     * the same bytes in and out, 128 times the scales and sums. fp8 only ({@code -p format=fp8}).
     */
    @Benchmark
    @OperationsPerInvocation(REPEAT)
    public void requantizeGroupsOnDevice() {
        if (product == null || !format.equals("fp8")) {
            throw new IllegalStateException("requantizeGroupsOnDevice: FP8 only; run it with -p format=fp8");
        }
        for (int i = 0; i < REPEAT; i++) {
            device.quant().fp8Requant(worker.stream(), dequantized, mergedWeight.pointer(), dequantizedWeight.pointer(), product.pointer(), 0,
                    rows, cols, 1, 128, (cols + 127) / 128, codes.pointer(), scales.pointer(), sums.pointer());
        }
        worker.stream().synchronize();
    }

    /** The requantizing merge's codec on the host, one thread: the block's merged values to the format's codes (NF4 for GPTQ and AWQ). */
    @Benchmark
    public ByteBuffer requantizeOnHost() throws Exception {
        requantizer.encode(0, count, mergedBlock, baseBlock, delta);
        return requantizer.codes(0, count);
    }

    @TearDown(Level.Trial)
    public void tearDown() throws Exception {
        values.close();
        merged.close();
        stagedWeight.close();
        dequantizedWeight.close();
        for (DeviceMemory m : new DeviceMemory[] {mergedWeight, product, codes, scales, sums}) {
            if (m != null) {
                m.close();
            }
        }
        dequantizer.close();
        factors.close();
        device.close();
        checkpoint.close();
        Synthetic.delete(dir);
    }

    /** A one-weight model folder with the weight in {@code format}'s layout (docs/FORMATS.md sections 5, 12, 13): random codes, scales near 0.02 / code range. */
    static void writeQuantized(Path model, String format, int rows, int cols) throws IOException {
        Files.createDirectories(model);
        String stem = WEIGHT.substring(0, WEIGHT.length() - ".weight".length());
        int groups = cols / GROUP;
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        String config;
        switch (format) {
            case "int8":
                entries.add(new SafetensorsWriter.Entry(WEIGHT, DType.I8, new long[] {rows, cols}));
                entries.add(new SafetensorsWriter.Entry(stem + ".SCB", DType.F32, new long[] {rows}));
                entries.add(new SafetensorsWriter.Entry(stem + ".weight_format", DType.U8, new long[] {}));
                config = "{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":true,\"load_in_4bit\":false,\"llm_int8_threshold\":6.0}";
                break;
            case "fp8":
                entries.add(new SafetensorsWriter.Entry(WEIGHT, DType.F8_E4M3, new long[] {rows, cols}));
                entries.add(new SafetensorsWriter.Entry(stem + ".weight_scale_inv", DType.F32, new long[] {(rows + 127) / 128, (cols + 127) / 128}));
                config = "{\"quant_method\":\"fp8\",\"activation_scheme\":\"dynamic\",\"weight_block_size\":[128,128]}";
                break;
            case "gptq":
                entries.add(new SafetensorsWriter.Entry(stem + ".qweight", DType.I32, new long[] {cols / 8, rows}));
                entries.add(new SafetensorsWriter.Entry(stem + ".qzeros", DType.I32, new long[] {groups, rows / 8}));
                entries.add(new SafetensorsWriter.Entry(stem + ".scales", DType.F16, new long[] {groups, rows}));
                entries.add(new SafetensorsWriter.Entry(stem + ".g_idx", DType.I32, new long[] {cols}));
                config = "{\"quant_method\":\"gptq\",\"bits\":4,\"group_size\":" + GROUP + ",\"desc_act\":false,\"sym\":true,"
                        + "\"checkpoint_format\":\"gptq\"}";
                break;
            case "awq":
                entries.add(new SafetensorsWriter.Entry(stem + ".qweight", DType.I32, new long[] {cols, rows / 8}));
                entries.add(new SafetensorsWriter.Entry(stem + ".qzeros", DType.I32, new long[] {groups, rows / 8}));
                entries.add(new SafetensorsWriter.Entry(stem + ".scales", DType.F16, new long[] {groups, rows}));
                config = "{\"quant_method\":\"awq\",\"bits\":4,\"group_size\":" + GROUP + ",\"zero_point\":true,\"version\":\"gemm\"}";
                break;
            default:
                throw new IllegalArgumentException("format " + format + ": fp4, int8, fp8, gptq or awq");
        }
        SplittableRandom rnd = new SplittableRandom(rows * 41L + cols + format.hashCode());
        FloatFormat f16 = FloatFormat.of(DType.F16);
        try (SafetensorsWriter w = SafetensorsWriter.create(model.resolve("model.safetensors"), entries, Map.of("format", "pt"))) {
            for (SafetensorsWriter.Entry e : entries) {
                long n = e.sizeInBytes();
                ByteBuffer b = ByteBuffer.allocate(Math.toIntExact(Math.max(n, 1))).order(ByteOrder.LITTLE_ENDIAN);
                String name = e.name();
                if (name.endsWith(".weight_format")) {
                    b.put((byte) 0);                                                       // "row", the only layout bitsandbytes reads
                } else if (name.endsWith(".SCB")) {
                    fill(b, () -> b.putFloat((float) (0.02 + 0.06 * rnd.nextDouble())));  // each row's absmax
                } else if (name.endsWith(".weight_scale_inv")) {
                    fill(b, () -> b.putFloat((float) ((0.02 + 0.06 * rnd.nextDouble()) / 448)));
                } else if (name.endsWith(".scales")) {
                    fill(b, () -> b.putShort((short) f16.encode(f16.round((0.002 + 0.006 * rnd.nextDouble())))));
                } else if (name.endsWith(".g_idx")) {
                    for (int i = 0; b.hasRemaining(); i++) {
                        b.putInt(i / GROUP);
                    }
                } else if (e.dtype() == DType.F8_E4M3) {
                    fill(b, () -> {
                        int code = rnd.nextInt(256);
                        b.put((byte) ((code & 0x7F) == 0x7F ? code & 0xF7 : code)); // no NaN (S.1111.111)
                    });
                } else {
                    fill(b, () -> b.put((byte) (e.dtype() == DType.I8 ? rnd.nextInt(255) - 127 : rnd.nextInt(256)))); // int8 codes, packed nibbles
                }
                b.flip();
                w.write(b);
            }
            w.finish();
        }
        Files.writeString(model.resolve("config.json"), "{\"model_type\":\"llama\",\"tie_word_embeddings\":false,\"torch_dtype\":\"bfloat16\","
                + "\"quantization_config\":" + config + "}");
    }

    private static void fill(ByteBuffer b, Runnable put) {
        while (b.hasRemaining()) {
            put.run();
        }
    }
}
