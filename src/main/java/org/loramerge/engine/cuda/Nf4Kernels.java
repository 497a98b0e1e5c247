package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import org.loramerge.format.FloatFormat;
import org.loramerge.quant.CudaFastMath;
import org.loramerge.quant.FourBitCode;
import org.loramerge.quant.Nf4Decoder;

/**
 * The 4-bit kernels of kernels/nf4.cu (see that file for what each computes), launched on a
 * stream: each quantizing, requantizing, dequantizing and measuring kernel in both of
 * bitsandbytes' code books, NF4 and FP4 ({@link FourBitCode}), which share everything but the
 * code of a scaled value and the values of the codes. Every launch is asynchronous; the caller synchronizes the stream.
 */
public final class Nf4Kernels {
    private static final int THREADS = 256;
    /** Blocks of a grid-stride launch at most: enough to fill any GPU several times over. */
    private static final int MAX_GRID = 1 << 16;
    /** Runs of 8 elements a thread of nf4_dequant and fp4_dequant takes at a time (nf4.cu DQ_RUNS). */
    private static final long DEQUANT_RUNS = 4;
    /** Elements per tile of nf4_measure: a multiple of every blocksize up to 4096. */
    public static final long MEASURE_TILE = 8192;

    private final Map<String, CUfunction> functions = new HashMap<>();

    /** Loads the kernels of {@code module} and gives it the reciprocal table of bitsandbytes' fast math (CudaFastMath). */
    Nf4Kernels(KernelModule module) {
        module.setGlobal("lm_rcp_table", CudaFastMath.reciprocalTable());
        for (String name : new String[] {"nf4_decode_absmax", "nf4_exponent_sums", "nf4_double_quant", "nf4_rcp_check"}) {
            functions.put(name, module.function(name));
        }
        for (String type : new String[] {"bf16", "f16", "f32"}) {
            for (String kernel : new String[] {"nf4_dequant_", "fp4_dequant_", "nf4_requant_", "fp4_requant_", "nf4_quantize_", "fp4_quantize_",
                "nf4_measure_", "fp4_measure_"}) {
                functions.put(kernel + type, module.function(kernel + type));
            }
        }
    }

    private static String type(FloatFormat fmt) {
        return fmt.dtype().name().toLowerCase(Locale.ROOT);
    }

    private void launch(CudaStream s, String kernel, long grid, Pointer... params) {
        if (grid <= 0) {
            return;
        }
        JCudaDriver.cuLaunchKernel(functions.get(kernel), Math.toIntExact(grid), 1, 1, THREADS, 1, 1, 0, s.driver(),
                Pointer.to(params), null);
    }

    private static long strideGrid(long n) {
        return Math.min(MAX_GRID, (n + THREADS - 1) / THREADS);
    }

    /** A group of min(32, blocksize / 8) lanes per NF4 block of {@code count} elements (nf4_requant_groups). */
    private static long groupGrid(long count, int blocksize) {
        long blocks = (count + blocksize - 1) / blocksize;
        long lanes = Math.min(32, blocksize / 8);
        return (blocks * lanes + THREADS - 1) / THREADS;
    }

    private static Pointer p(long v) {
        return Pointer.to(new long[] {v});
    }

    private static Pointer p(float v) {
        return Pointer.to(new float[] {v});
    }

    /** out[i] = fl32(fl32(map[codes[i]] · nestedAbsmax[i / nestedBlocksize]) + offset), i &lt; n. */
    public void decodeAbsmax(CudaStream s, Pointer codes, Pointer nestedAbsmax, Pointer map, float offset, int nestedBlocksize, long n,
                      Pointer out) {
        launch(s, "nf4_decode_absmax", strideGrid(n), Pointer.to(codes), Pointer.to(nestedAbsmax), Pointer.to(map), p(offset),
                p((long) nestedBlocksize), p(n), Pointer.to(out));
    }

    /** Elements [first, first + count) to {@code fmt} bits: {@code packed} from byte first / 2, {@code absmax} of the whole weight. */
    public void dequant(CudaStream s, FloatFormat fmt, Pointer packed, long first, long count, Pointer absmax, int blocksize, Pointer out) {
        dequant(s, FourBitCode.NF4, fmt, packed, first, count, absmax, blocksize, out);
    }

    /** {@link #dequant} of a weight in code book {@code book} (NF4 or FP4, stored alike). */
    public void dequant(CudaStream s, FourBitCode book, FloatFormat fmt, Pointer packed, long first, long count, Pointer absmax, int blocksize,
                        Pointer out) {
        // from an element offset that is a multiple of 8 a thread takes DEQUANT_RUNS runs of 8 elements at a time (one 16-byte
        // store of 16-bit out each); the last few are taken one by one by the same threads
        long threads = (first & 7) == 0 ? Math.max(((count >> 3) + DEQUANT_RUNS - 1) / DEQUANT_RUNS, count & 7) : count;
        launch(s, book.typeName() + "_dequant_" + type(fmt), strideGrid(threads), Pointer.to(packed), p(first), p(count), Pointer.to(absmax),
                p((long) blocksize), Pointer.to(out));
    }

    /**
     * Requantizes merged X and base W of elements [first, first + count) into the whole-weight
     * arrays (nf4_requant); x, w and product must be 16-byte aligned.
     */
    public void requant(CudaStream s, FloatFormat fmt, Pointer x, Pointer w, Pointer product, long first, long count, int blocksize,
                 Pointer packedX, Pointer packedW, Pointer absmaxX, Pointer absmaxW, Pointer sums) {
        requant(s, FourBitCode.NF4, fmt, x, w, product, first, count, blocksize, packedX, packedW, absmaxX, absmaxW, sums);
    }

    /** {@link #requant} into code book {@code book} (NF4 or FP4; fp4_requant for FP4). */
    public void requant(CudaStream s, FourBitCode book, FloatFormat fmt, Pointer x, Pointer w, Pointer product, long first, long count,
                        int blocksize, Pointer packedX, Pointer packedW, Pointer absmaxX, Pointer absmaxW, Pointer sums) {
        launch(s, book.typeName() + "_requant_" + type(fmt), groupGrid(count, blocksize), Pointer.to(x), Pointer.to(w), Pointer.to(product), p(first),
                p(count), p((long) blocksize), Pointer.to(packedX), Pointer.to(packedW), Pointer.to(absmaxX), Pointer.to(absmaxW),
                Pointer.to(sums));
    }

    /** Quantizes elements [first, first + count) given in {@code x} (16-byte aligned) into the whole-weight arrays. */
    public void quantize(CudaStream s, FloatFormat fmt, Pointer x, long first, long count, int blocksize, Pointer packed, Pointer absmax) {
        quantize(s, FourBitCode.NF4, fmt, x, first, count, blocksize, packed, absmax);
    }

    /** {@link #quantize} into code book {@code book} (NF4 or FP4). */
    public void quantize(CudaStream s, FourBitCode book, FloatFormat fmt, Pointer x, long first, long count, int blocksize, Pointer packed,
                         Pointer absmax) {
        launch(s, book.typeName() + "_quantize_" + type(fmt), groupGrid(count, blocksize), Pointer.to(x), p(first), p(count), p((long) blocksize),
                Pointer.to(packed), Pointer.to(absmax));
    }

    /** The 512 exponent sums of n fp32 values (DoubleQuant.exponentSums), added into {@code sums}, which the caller zeroes. */
    public void exponentSums(CudaStream s, Pointer values, long n, Pointer sums) {
        launch(s, "nf4_exponent_sums", strideGrid(n), Pointer.to(values), p(n), Pointer.to(sums));
    }

    /** DoubleQuant.quantize of n absmax values, given their offset. */
    public void doubleQuant(CudaStream s, Pointer absmax, long n, float offset, Pointer map, Pointer codes, Pointer nestedAbsmax) {
        launch(s, "nf4_double_quant", (n + 255) / 256, Pointer.to(absmax), p(n), p(offset), Pointer.to(map), Pointer.to(codes),
                Pointer.to(nestedAbsmax));
    }

    /**
     * How many of 2 · 2^23 reciprocals (every significand, in two binades) this GPU's
     * rcp.approx.ftz.f32 computes otherwise than the table loramerge emulates it with: 0 on a GPU
     * whose bitsandbytes build writes the bytes loramerge writes. Synchronizes {@code s}.
     */
    public long reciprocalMismatches(CudaStream s) {
        try (DeviceMemory count = new DeviceMemory(Sizeof.LONG)) {
            JCuda.cudaMemsetAsync(count.pointer(), 0, Sizeof.LONG, s.runtime());
            JCudaDriver.cuLaunchKernel(functions.get("nf4_rcp_check"), (1 << 23) / THREADS, 1, 1, THREADS, 1, 1, 0, s.driver(),
                    Pointer.to(Pointer.to(count.pointer())), null);
            long[] out = new long[1];
            s.synchronize();
            JCuda.cudaMemcpy(Pointer.to(out), count.pointer(), Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
            return out[0];
        }
    }

    /** The survival sums per tile of {@link #MEASURE_TILE} elements: 4 doubles a tile into {@code out}. */
    public void measure(CudaStream s, FloatFormat fmt, Pointer packedX, Pointer packedW, Pointer scaleX, Pointer scaleW, Pointer sums, long n,
                 int blocksize, Pointer out) {
        measure(s, FourBitCode.NF4, fmt, packedX, packedW, scaleX, scaleW, sums, n, blocksize, out);
    }

    /** {@link #measure} of codes of code book {@code book} (NF4 or FP4). */
    public void measure(CudaStream s, FourBitCode book, FloatFormat fmt, Pointer packedX, Pointer packedW, Pointer scaleX, Pointer scaleW,
                        Pointer sums, long n, int blocksize, Pointer out) {
        launch(s, book.typeName() + "_measure_" + type(fmt), tiles(n), Pointer.to(packedX), Pointer.to(packedW), Pointer.to(scaleX),
                Pointer.to(scaleW), Pointer.to(sums), p(n), p((long) blocksize), p(MEASURE_TILE), Pointer.to(out));
    }

    public static long tiles(long n) {
        return (n + MEASURE_TILE - 1) / MEASURE_TILE;
    }

    /**
     * The decoded absmax of every block of an NF4 weight, on the device: the stored fp32 values
     * uploaded, or the double-quantized ones uploaded and decoded by {@link #decodeAbsmax}.
     * Synchronizes {@code s}.
     */
    public DeviceMemory decodedAbsmax(DevicePool pool, CudaStream s, Nf4Decoder d) throws IOException {
        long blocks = d.tensor().state().numBlocks();
        ByteBuffer stored = d.storedAbsmax();
        DeviceMemory out = take(pool, blocks * Sizeof.FLOAT);
        try {
            if (!d.isDoubleQuant()) {
                upload(s, out, stored);
                s.synchronize();
                return out;
            }
            try (DeviceMemory codes = take(pool, blocks);
                 DeviceMemory nested = uploadFloats(pool, s, d.nestedAbsmax());
                 DeviceMemory map = uploadFloats(pool, s, d.nestedQuantMap())) {
                upload(s, codes, stored);
                decodeAbsmax(s, codes.pointer(), nested.pointer(), map.pointer(), d.offset(), d.nestedBlocksize(), blocks, out.pointer());
                s.synchronize();
            }
            return out;
        } catch (RuntimeException e) {
            out.close();
            throw e;
        }
    }

    /** Memory from {@code pool}, or newly allocated when it is null. */
    public static DeviceMemory take(DevicePool pool, long bytes) {
        return pool == null ? new DeviceMemory(bytes) : pool.take(bytes);
    }

    /** {@code values} on the device, after the work queued on {@code s}, in memory from {@code pool} (or newly allocated when it is null). */
    public static DeviceMemory uploadFloats(DevicePool pool, CudaStream s, float[] values) {
        s.synchronize();
        return DeviceMemory.upload(pool, Pointer.to(values), (long) values.length * Sizeof.FLOAT);
    }

    /**
     * Copies a heap or direct buffer's remaining bytes to {@code dst}, after the work queued on
     * {@code s}; returns when the copy has landed ({@link DeviceMemory#copyFromHost}).
     */
    public static void upload(CudaStream s, DeviceMemory dst, ByteBuffer src) {
        ByteBuffer b = src.slice();
        Pointer from = b.isDirect() ? Pointer.to(b) : Pointer.to(toArray(b));
        s.synchronize();
        dst.copyFromHost(0, from, b.remaining());
    }

    private static byte[] toArray(ByteBuffer b) {
        if (b.hasArray() && b.arrayOffset() == 0 && b.array().length == b.remaining()) {
            return b.array();
        }
        byte[] a = new byte[b.remaining()];
        b.duplicate().get(a);
        return a;
    }
}
