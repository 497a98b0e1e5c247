package org.loramerge.engine.cuda;

import java.util.HashMap;
import java.util.Locale;
import java.util.Map;
import jcuda.Pointer;
import jcuda.driver.CUfunction;
import jcuda.driver.JCudaDriver;
import org.loramerge.format.FloatFormat;
import org.loramerge.quant.CudaFastMath;

/**
 * The kernels of kernels/quant.cu, launched on a stream: the dequantization of FP8, LLM.int8,
 * GPTQ and AWQ row blocks, and the requantization of merged FP8 and LLM.int8 row blocks and of
 * FP8 weights with one scale for the whole tensor (see that
 * file for what each computes and how it is laid out). Every launch is asynchronous; the caller
 * synchronizes the stream.
 */
public final class QuantKernels {
    private static final int THREADS = 256;
    /** Blocks of a grid-stride launch at most: enough to fill any GPU several times over. */
    private static final int MAX_GRID = 1 << 16;
    /** The tile kernels' blocks: 32 x 8 threads over tiles of 32 x 32 words. */
    private static final int TILE = 32;
    private static final int MAX_GRID_Y = 65535;

    private final Map<String, CUfunction> functions = new HashMap<>();

    /** Loads the kernels of {@code module} and gives it the reciprocal table of bitsandbytes' fast math (CudaFastMath), which int8_requant reads. */
    QuantKernels(KernelModule module) {
        module.setGlobal("lm_rcp_table", CudaFastMath.reciprocalTable());
        functions.put("int8_dequant_f32", module.function("int8_dequant_f32"));
        functions.put("int8_requant", module.function("int8_requant"));
        for (String type : new String[] {"bf16", "f16", "f32"}) {
            for (String kernel : new String[] {"fp8_dequant_", "gptq_dequant_", "awq_dequant_", "fp8_requant_", "fp8_tensor_stage_",
                "fp8_tensor_requant_"}) {
                functions.put(kernel + type, module.function(kernel + type));
            }
        }
    }

    private static String type(FloatFormat fmt) {
        return fmt.dtype().name().toLowerCase(Locale.ROOT);
    }

    /** A grid-stride launch over {@code work} items, 256 threads a block. */
    private void launch(CudaStream s, String kernel, long work, Pointer... params) {
        long grid = Math.min(MAX_GRID, (work + THREADS - 1) / THREADS);
        if (grid <= 0) {
            return;
        }
        JCudaDriver.cuLaunchKernel(functions.get(kernel), (int) grid, 1, 1, THREADS, 1, 1, 0, s.driver(), Pointer.to(params), null);
    }

    /** A launch of a tile kernel over {@code tilesX} x {@code tilesY} tiles of 32 x 32 words, 32 x 8 threads a block. */
    private void launchTiles(CudaStream s, String kernel, long tilesX, long tilesY, Pointer... params) {
        if (tilesX <= 0 || tilesY <= 0) {
            return;
        }
        JCudaDriver.cuLaunchKernel(functions.get(kernel), (int) Math.min(MAX_GRID, tilesX), (int) Math.min(MAX_GRID_Y, tilesY), 1,
                TILE, 8, 1, 0, s.driver(), Pointer.to(params), null);
    }

    private static Pointer p(long v) {
        return Pointer.to(new long[] {v});
    }

    private static Pointer p(int v) {
        return Pointer.to(new int[] {v});
    }

    /**
     * The work items of fp8_dequant and int8_dequant: a run of 16 elements of 16-bit {@code out}
     * a thread, of 4 of F32 (quant.cu scaled_run), when rows are a multiple of that long, else one element.
     */
    private static long scaledWork(long rowCount, long cols, FloatFormat out) {
        long run = out == FloatFormat.F32 ? 4 : 16;
        return cols % run == 0 ? rowCount * cols / run : rowCount * cols;
    }

    /**
     * Rows {@code [row0, row0 + rowCount)} of an FP8 weight, their codes at {@code codes}
     * (16-byte aligned), to {@code fmt} bits at {@code out} (16-byte aligned): the scale of (row,
     * col) is {@code scales[(row / blockRows) · scaleCols + col / blockCols]}, the product of code
     * and scale rounded to {@code product} first (F32, or the 16-bit scales' dtype), then to fmt.
     */
    public void fp8(CudaStream s, FloatFormat fmt, Pointer codes, long row0, long rowCount, long cols, Pointer scales, long blockRows,
                    long blockCols, long scaleCols, boolean e5m2, FloatFormat product, Pointer out) {
        launch(s, "fp8_dequant_" + type(fmt), scaledWork(rowCount, cols, fmt), Pointer.to(codes), p(rowCount), p(cols), p(row0),
                Pointer.to(scales), p(blockRows), p(blockCols), p(scaleCols), p(e5m2 ? 1 : 0), p(MergeKernels.code(product)),
                Pointer.to(out));
    }

    /** Rows {@code [row0, row0 + rowCount)} of an LLM.int8 weight to F32 at {@code out}, with the whole weight's row scales {@code scb}. */
    public void int8(CudaStream s, Pointer codes, long row0, long rowCount, long cols, Pointer scb, Pointer out) {
        launch(s, "int8_dequant_f32", scaledWork(rowCount, cols, FloatFormat.F32), Pointer.to(codes), p(rowCount), p(cols), p(row0), Pointer.to(scb),
                Pointer.to(out));
    }

    /**
     * Rows {@code [row0, row0 + rowCount)} of a GPTQ weight of {@code rows} rows, its words
     * gathered as PackedIntWeight#gatherRowWords does, to {@code fmt} bits at {@code out}
     * (16-byte aligned); zeros, scales and gIdx of the whole weight.
     */
    public void gptq(CudaStream s, FloatFormat fmt, Pointer words, long row0, long rowCount, long cols, long rows, int bits, Pointer zeros,
                     Pointer scales, Pointer gIdx, Pointer out) {
        long packedRows = cols / (32 / bits);
        launchTiles(s, "gptq_dequant_" + type(fmt), (rowCount + TILE - 1) / TILE, (packedRows + TILE - 1) / TILE, Pointer.to(words),
                p(rowCount), p(cols), p(row0), p(rows), p(bits), Pointer.to(zeros), Pointer.to(scales), Pointer.to(gIdx), Pointer.to(out));
    }

    /** {@link #gptq} for an AWQ (GEMM) weight: its words gathered as {@code [cols, word columns of the rows]}. */
    public void awq(CudaStream s, FloatFormat fmt, Pointer words, long row0, long rowCount, long cols, long rows, Pointer zeros,
                    Pointer scales, Pointer gIdx, Pointer out) {
        long wordCols = (row0 + rowCount + 7) / 8 - row0 / 8;
        // tiles of 256 columns x 8 word columns (quant.cu awq_tiles)
        launchTiles(s, "awq_dequant_" + type(fmt), (cols + 255) / 256, (wordCols + 7) / 8, Pointer.to(words),
                p(rowCount), p(cols), p(row0), p(rows), Pointer.to(zeros), Pointer.to(scales), Pointer.to(gIdx), Pointer.to(out));
    }

    /** A launch of a requantization kernel: {@code blocks} 256-thread blocks (one per quantization block), at most {@link #MAX_GRID}. */
    private void launchBlocks(CudaStream s, String kernel, long blocks, Pointer... params) {
        if (blocks <= 0) {
            return;
        }
        JCudaDriver.cuLaunchKernel(functions.get(kernel), (int) Math.min(MAX_GRID, blocks), 1, 1, THREADS, 1, 1, 0, s.driver(),
                Pointer.to(params), null);
    }

    /**
     * Requantizes rows {@code [row0, row0 + rowCount)} of a merged FP8 weight (fp8_requant):
     * {@code x} the merged values, {@code w} the base values (both {@code fmt} bits), {@code p} the
     * fp64 product, row-major; the e4m3 codes to {@code codes} (byte e for element e of the rows),
     * and for each quantization block q of {@code blockRows x blockCols} ({@code gridCols} a row of
     * blocks, numbered over the whole weight) its inverse scale to {@code scaleInv[q]} and its five
     * sums to {@code sums[5q..5q+4]}. row0 is a multiple of blockRows.
     */
    public void fp8Requant(CudaStream s, FloatFormat fmt, Pointer x, Pointer w, Pointer p, long row0, long rowCount, long cols, long blockRows,
                           long blockCols, long gridCols, Pointer codes, Pointer scaleInv, Pointer sums) {
        long blocks = (rowCount + blockRows - 1) / blockRows * gridCols;
        if (blockRows == 1 && blockCols <= 256 && (cols | blockCols) % 8 == 0) {
            // groups of a row: 8 or 16 lanes a quantization block (quant.cu fp8_requant_groups)
            blocks = (blocks * (blockCols <= 128 ? 8 : 16) + THREADS - 1) / THREADS;
        }
        launchBlocks(s, "fp8_requant_" + type(fmt), blocks, Pointer.to(x), Pointer.to(w), Pointer.to(p), p(rowCount), p(cols), p(row0),
                p(blockRows), p(blockCols), p(gridCols), Pointer.to(codes), Pointer.to(scaleInv), Pointer.to(sums));
    }

    /**
     * Keeps a row block of an FP8 weight with one scale for the whole tensor (fp8_tensor_stage):
     * {@code x}, {@code w} ({@code fmt} bits) and {@code p} (fp64) of {@code count} elements, the
     * weight's elements from {@code first}, go to {@code xAll}, {@code wAll} and, as ΔW, {@code dwAll}
     * at {@code first}; their max |X| and |W| are folded into the float bits {@code amax[0..1]}, their
     * non-finite X counted into the uint {@code bad}.
     */
    public void fp8TensorStage(CudaStream s, FloatFormat fmt, Pointer x, Pointer w, Pointer p, long count, long first, Pointer xAll, Pointer wAll,
                               Pointer dwAll, Pointer amax, Pointer bad) {
        launch(s, "fp8_tensor_stage_" + type(fmt), count, Pointer.to(x), Pointer.to(w), Pointer.to(p), p(count), p(first), Pointer.to(xAll),
                Pointer.to(wAll), Pointer.to(dwAll), Pointer.to(amax), Pointer.to(bad));
    }

    /**
     * Requantizes the whole FP8 weight of {@code n} elements that {@link #fp8TensorStage} kept, with X's
     * scale {@code sx} and inverse {@code invX} and W's {@code sw} and {@code invW} (fp8_tensor_requant),
     * on {@code blocks} blocks: its codes to {@code codes}, each block's five sums to {@code sums[5b..5b+4]}.
     */
    public void fp8TensorRequant(CudaStream s, FloatFormat fmt, Pointer xAll, Pointer wAll, Pointer dwAll, long n, float sx, float sw, float invX,
                                 float invW, int blocks, Pointer codes, Pointer sums) {
        launchBlocks(s, "fp8_tensor_requant_" + type(fmt), blocks, Pointer.to(xAll), Pointer.to(wAll), Pointer.to(dwAll), p(n),
                Pointer.to(new float[] {sx}), Pointer.to(new float[] {sw}), Pointer.to(new float[] {invX}), Pointer.to(new float[] {invW}),
                Pointer.to(codes), Pointer.to(sums));
    }

    /**
     * Requantizes rows {@code [row0, row0 + rowCount)} of a merged LLM.int8 weight (int8_requant):
     * {@code x}, {@code w} F32 bits, {@code p} fp64, row-major; the int8 codes to {@code codes}, and
     * for each row r of the weight its SCB to {@code scb[r]} and its five sums to {@code sums[5r..5r+4]}.
     */
    public void int8Requant(CudaStream s, Pointer x, Pointer w, Pointer p, long row0, long rowCount, long cols, Pointer codes, Pointer scb,
                            Pointer sums) {
        launchBlocks(s, "int8_requant", rowCount, Pointer.to(x), Pointer.to(w), Pointer.to(p), p(rowCount), p(cols), p(row0), Pointer.to(codes),
                Pointer.to(scb), Pointer.to(sums));
    }
}
