package org.loramerge.quant;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.Locale;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

/**
 * One FP8 weight: an {@code [out, in]} tensor of e4m3 (or e5m2) codes and its scales, in one of
 * the two layouts {@link Fp8Format} reads. Its value is {@code code · scale}: transformers'
 * fine-grained FP8 stores the multiplier as {@code P.weight_scale_inv} (integrations/finegrained_fp8.py
 * Fp8Dequantize), compressed-tensors as {@code P.weight_scale} (quantization/lifecycle/forward_helpers.py
 * _dequantize); both multiply.
 *
 * <p>Dequantized value, as the format's own code computes it: the product (exact: a code has 4
 * significant bits) is rounded once to the product dtype, fp32 for transformers ({@code q.float() *
 * s.float()}) and the scale's dtype for compressed-tensors ({@code x_q.to(scale.dtype) * scale}),
 * then once more to {@link #dtype()}, the model's dtype, which is what the loaded (dequantized)
 * model holds and what PEFT merges into.
 *
 * @param weightName   {@code P.weight}
 * @param weight       the codes, F8_E4M3 or F8_E5M2 {@code [out, in]}
 * @param scale        the scales: {@code []} or {@code [1]} (per tensor), {@code [out, 1]} (per
 *                     channel), {@code [out, in / groupSize]} (per group of columns) or
 *                     {@code [ceil(out / blockRows), ceil(in / blockCols)]} (per block)
 * @param scheme       which of those
 * @param blockRows    rows of a block (BLOCK), else 1
 * @param blockCols    columns of a block (BLOCK) or a group (GROUP), else the row length
 * @param productDtype the dtype the product is rounded to first
 * @param dtype        the model's dtype, which the product is rounded to then
 * @param layout       "transformers fine-grained FP8" or "compressed-tensors float-quantized", for messages
 * @param tensorNames  every tensor of the group, the codes first (activation scales included)
 * @param scales       the scales, decoded, in the scale tensor's order
 * @param extras       the group's other tensors (activation scales), which a requantized output keeps as they are
 */
public record Fp8Weight(String weightName, Part weight, Part scale, Scheme scheme, int blockRows, int blockCols, DType productDtype,
                        DType dtype, String layout, List<String> tensorNames, float[] scales, List<Part> extras) implements QuantizedWeight {
    /** How the scales cover the weight. */
    public enum Scheme { TENSOR, CHANNEL, GROUP, BLOCK }

    /** A tensor of the group and its file. */
    public record Part(SafetensorsFile file, TensorInfo info) {
    }

    public Fp8Weight {
        tensorNames = List.copyOf(tensorNames);
        extras = List.copyOf(extras);
    }

    @Override
    public String kind() {
        return "fp8";
    }

    public long rows() {
        return weight.info().dim(0);
    }

    public long cols() {
        return weight.info().dim(1);
    }

    /** The number of scale columns (the scale grid's second dimension). */
    private long scaleCols() {
        switch (scheme) {
            case TENSOR:
                return 1;
            case CHANNEL:
                return 1;
            default:
                return (cols() + blockCols - 1) / blockCols;
        }
    }

    /** The scale of element (row, col). */
    float scaleAt(long row, long col) {
        switch (scheme) {
            case TENSOR:
                return scales[0];
            case CHANNEL:
                return scales[(int) row];
            default:
                return scales[(int) ((row / blockRows) * scaleCols() + col / blockCols)];
        }
    }

    @Override
    public long[] shape() {
        return weight.info().shape();
    }

    @Override
    public long numElements() {
        return weight.info().numElements();
    }

    @Override
    public SafetensorsFile file() {
        return weight.file();
    }

    @Override
    public String describe() {
        String grid;
        switch (scheme) {
            case TENSOR:
                grid = "one scale";
                break;
            case CHANNEL:
                grid = "a scale per row";
                break;
            case GROUP:
                grid = "a scale per " + blockCols + " columns";
                break;
            default:
                grid = "a scale per " + blockRows + "x" + blockCols + " block";
                break;
        }
        return String.format(Locale.ROOT, "FP8 %s (%s), %s (%s), %s", weight.info().dtype() == DType.F8_E5M2 ? "e5m2" : "e4m3",
                layout, grid, scale.info().dtype(), dtype.torchName());
    }

    /** The value of a code. */
    float decode(int code) {
        return weight.info().dtype() == DType.F8_E5M2 ? Fp8Codec.decodeE5M2(code) : Fp8Codec.decodeE4M3(code);
    }

    /** {@code round_dtype(round_product(code · scale))}, as the format's code computes it. */
    double value(int code, float s) {
        double product = (double) decode(code) * s; // exact: at most 4 x 24 significant bits
        double first = productDtype == DType.F32 ? (double) (float) product : FloatFormat.of(productDtype).round(product);
        return FloatFormat.of(dtype).round(first);
    }

    @Override
    public void dequantizeTo(long firstElement, int count, ByteBuffer dst) throws IOException {
        if (firstElement < 0 || count < 0 || firstElement + count > numElements()) {
            throw new IllegalArgumentException("elements [" + firstElement + ", +" + count + ") outside " + weightName);
        }
        FloatFormat out = FloatFormat.of(dtype);
        long cols = cols();
        try (MappedRegion r = weight.file().map(weight.info(), firstElement, count)) {
            ByteBuffer codes = r.bytes();
            for (int i = 0; i < count; i++) {
                long e = firstElement + i;
                out.putBits(dst, i, out.encode(value(codes.get(i), scaleAt(e / cols, e % cols))));
            }
        }
    }

    @Override
    public MappedRegion storedCodes(long firstElement, int count) throws IOException {
        return weight.file().map(weight.info(), firstElement, count);
    }

    /**
     * Why {@code --to fp8} cannot requantize this weight with its own scheme, if it cannot: loramerge
     * requantizes transformers' fine-grained layout with float scales, as transformers' Fp8Quantize does.
     */
    @Override
    public java.util.Optional<String> whyNotRequantizable() {
        if (!layout.startsWith("transformers")) {
            return java.util.Optional.of(layout + " weights take their scales from llm-compressor's observers, which loramerge does not "
                    + "restate; merge --to bf16 and quantize the result with llm-compressor");
        }
        if (scale.info().dtype() != DType.F32) {
            return java.util.Optional.of("its scales are " + scale.info().dtype() + " (scale_fmt ue8m0), which loramerge does not requantize; "
                    + "merge --to bf16 instead");
        }
        return java.util.Optional.empty();
    }

    /** The output of {@code --to fp8}: this weight's layout, block grid and group, with new codes and scales. */
    @Override
    public QuantizedOutput requantizedOutput() {
        if (whyNotRequantizable().isPresent()) {
            throw new IllegalStateException(weightName + ": " + whyNotRequantizable().get());
        }
        return Fp8Output.requantizing(this);
    }

    @Override
    public String toString() {
        return weightName + " " + describe();
    }
}
