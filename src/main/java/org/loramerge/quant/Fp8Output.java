package org.loramerge.quant;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;

/**
 * A weight written in transformers' fine-grained FP8 layout ({@code merge --to fp8}): the e4m3
 * codes {@code P.weight}, the F32 {@code weight_scale_inv} of its block grid ({@link
 * Fp8Requantizer}), and, for an FP8 base, the group's activation scales as they were. Two kinds:
 * an FP8 weight requantized with its own scheme and scale tensor ({@link #requantizing}), and a
 * weight of another format (GPTQ, AWQ) quantized to 128 x 128 blocks as transformers'
 * {@code Fp8Quantize} quantizes a dense weight ({@link #forDense}).
 */
public final class Fp8Output implements QuantizedOutput {
    /** transformers' FineGrainedFP8Config default weight_block_size: what {@link #forDense} writes. */
    public static final int BLOCK = 128;

    private final long rows;
    private final long cols;
    private final int blockRows;
    private final int blockCols;
    private final DType dtype;
    /** The FP8 base requantized with its own scheme; null for a weight of another format. */
    private final Fp8Weight own;

    private Fp8Output(long rows, long cols, int blockRows, int blockCols, DType dtype, Fp8Weight own) {
        this.rows = rows;
        this.cols = cols;
        this.blockRows = blockRows;
        this.blockCols = blockCols;
        this.dtype = dtype;
        this.own = own;
    }

    /** {@code base} requantized with its own scheme: its block grid (the whole weight for one scale), scale tensor and activation scales. */
    public static Fp8Output requantizing(Fp8Weight base) {
        boolean tensor = base.scheme() == Fp8Weight.Scheme.TENSOR;
        return new Fp8Output(base.rows(), base.cols(), tensor ? Math.toIntExact(base.rows()) : base.blockRows(),
                tensor ? Math.toIntExact(base.cols()) : base.blockCols(), base.dtype(), base);
    }

    /**
     * A weight of another format, of {@code shape} [out, in] and dequantized dtype {@code dtype},
     * quantized to e4m3 with one scale per {@link #BLOCK} x {@link #BLOCK} block. The caller checks
     * that the blocks divide the weight ({@link #whyNotBlocks}).
     */
    public static Fp8Output forDense(DType dtype, long[] shape) {
        if (whyNotBlocks(shape).isPresent()) {
            throw new IllegalArgumentException(whyNotBlocks(shape).get());
        }
        return new Fp8Output(shape[0], shape[1], BLOCK, BLOCK, dtype, null);
    }

    /**
     * Why a weight of {@code shape} cannot be written in {@link #BLOCK} x {@link #BLOCK} blocks, if
     * it cannot: transformers' loader derives the block from the scale grid and refuses a grid that
     * does not divide the weight (integrations/finegrained_fp8.py Fp8Dequantize), and its own
     * Fp8Quantize leaves such a weight unquantized rather than padding it.
     */
    public static Optional<String> whyNotBlocks(long[] shape) {
        if (shape.length != 2 || shape[0] % BLOCK != 0 || shape[1] % BLOCK != 0) {
            return Optional.of("is " + Arrays.toString(shape) + ", which FP8's " + BLOCK + "x" + BLOCK + " blocks do not divide "
                    + "(transformers' FP8 loader refuses a scale grid that does not divide the weight)");
        }
        return Optional.empty();
    }

    /** Rows of a quantization block: the weight's rows for one scale per tensor. */
    public int blockRows() {
        return blockRows;
    }

    /** Columns of a quantization block (a row's columns for a scale per row or per tensor). */
    public int blockCols() {
        return blockCols;
    }

    /** Whether one scale covers the whole weight: every code waits for the whole merged weight's absmax. */
    public boolean isPerTensor() {
        return own != null && own.scheme() == Fp8Weight.Scheme.TENSOR;
    }

    /** The tensors the output copies after the codes and scales (an FP8 base's activation scales). */
    public List<Fp8Weight.Part> extras() {
        return own == null ? List.of() : own.extras();
    }

    @Override
    public List<SafetensorsWriter.Entry> entries(String weightName) {
        List<SafetensorsWriter.Entry> out = new ArrayList<>();
        out.add(new SafetensorsWriter.Entry(weightName, DType.F8_E4M3, new long[] {rows, cols}));
        if (own != null) {
            out.add(new SafetensorsWriter.Entry(own.scale().info().name(), DType.F32, own.scale().info().shape()));
        } else {
            String stem = weightName.substring(0, weightName.length() - ".weight".length());
            out.add(new SafetensorsWriter.Entry(stem + ".weight_scale_inv", DType.F32, new long[] {rows / BLOCK, cols / BLOCK}));
        }
        for (Fp8Weight.Part p : extras()) {
            out.add(new SafetensorsWriter.Entry(p.info().name(), p.info().dtype(), p.info().shape()));
        }
        return out;
    }

    @Override
    public String kind() {
        return "FP8";
    }

    @Override
    public int blockElements() {
        return Math.toIntExact((long) blockRows * cols);
    }

    /** A requantizer of {@code w}'s merged values: the FP8 base itself, or for {@link #forDense} a weight of its shape and dtype. */
    @Override
    public Requantizer requantizer(QuantizedWeight w) {
        if (own != null ? w != own : w.dtype() != dtype || !Arrays.equals(w.shape(), new long[] {rows, cols})) {
            throw new IllegalArgumentException(w.weightName() + " is not the weight this output was made for");
        }
        return new Fp8Requantizer(w.weightName(), w.file().path(), rows, cols, blockRows, blockCols, dtype, extras());
    }
}
