package org.loramerge.api;

import java.util.ArrayList;
import java.util.List;
import org.loramerge.quant.ModelQuantizer;

/**
 * What {@link LoraMerge#quantize} wrote. Immutable; the {@code quantize --json} summary is this record with snake_case keys.
 *
 * @param quantType            the 4-bit code book written: {@code nf4} or {@code fp4}
 * @param worstErrorOverAbsmax the largest |W − dequant(Q(W))| as a share of its block's absmax
 * @param tensors              every quantized weight
 * @param skipped              2-D weights kept unquantized, and why
 */
public record QuantizeResult(String output, String quantType, int blocksize, boolean doubleQuant, String computeDtype, int tensorsQuantized, int tensorsCopied,
                             long bytesRead, long bytesWritten, double seconds, double worstErrorOverAbsmax, List<QuantizedTensor> tensors,
                             List<Skipped> skipped, List<String> warnings) {

    /** One weight written as a 4-bit group. */
    public record QuantizedTensor(String name, String dtype, List<Long> shape, long blocks, double maxErrorOverAbsmax) {
    }

    /** A weight kept as it was. */
    public record Skipped(String name, String reason) {
    }

    static QuantizeResult of(ModelQuantizer.Report r) {
        List<QuantizedTensor> tensors = new ArrayList<>();
        for (ModelQuantizer.QuantizedTensor t : r.tensors) {
            tensors.add(new QuantizedTensor(t.name(), t.dtype(), MergeResult.shape(t.shape()), t.blocks(), t.maxErrorOverAbsmax()));
        }
        List<Skipped> skipped = new ArrayList<>();
        for (ModelQuantizer.Skipped s : r.skipped) {
            skipped.add(new Skipped(s.name(), s.reason()));
        }
        return new QuantizeResult(r.output, r.quantType, r.blocksize, r.doubleQuant, r.computeDtype, r.tensorsQuantized, r.tensorsCopied, r.bytesRead,
                r.bytesWritten, r.seconds, r.worstErrorOverAbsmax, List.copyOf(tensors), List.copyOf(skipped), List.copyOf(r.warnings));
    }
}
