package org.loramerge.plan;

import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.QuantizedOutput;

/**
 * One tensor of the merged checkpoint and everything that happens to it, decided before any byte
 * is written: what it is made from ({@link #source()}), what is applied ({@link Update}), the dtype
 * its values are rounded to, and so how it is written ({@link #route()}). Made by the named
 * factories below; immutable.
 */
public final class OutputTensor {
    /** What kind of work the tensor needs, for the report. */
    public enum Kind {
        /** Bytes pass through unchanged. */
        COPY,
        /** Only a dtype conversion (rounded once). */
        CONVERT,
        /** A base tensor with LoRA terms, DoRA, token rows or a combination of adapters applied. */
        MERGE,
        /** Replaced by a tensor of the adapter (base_layer, modules_to_save, bias="all"), possibly with terms on top. */
        REPLACE,
        /** A quantized weight without adapter terms, written dense (merge --to bf16/f16/f32). */
        DEQUANTIZE
    }

    /** How the pipeline writes the tensor: one strategy each, chosen here from the plan's decisions. */
    public enum Route {
        /** The source's bytes, copied file to file. */
        BYTE_COPY,
        /** Row blocks merged (or converted) by the engine, written in order. */
        ROWS,
        /** DoRA with one norm per column: a first pass over the rows for the column norms, then {@link #ROWS}. */
        ROWS_AFTER_COLUMN_NORMS,
        /** Row blocks merged and requantized into {@link #quantizedOutput()}, then the group's scales. */
        REQUANTIZE
    }

    /**
     * What the adapter (or adapters) apply to a tensor.
     *
     * @param terms     low-rank updates, in adapter order
     * @param dora      DoRA's magnitude rescaling, or null
     * @param tokenRows rows replaced by trainable tokens, or null
     * @param combined  several adapters' updates combined by a method other than an exact sum
     *                  (docs/FORMATS.md §8), or null; applied after {@code terms}
     */
    public record Update(List<TermSpec> terms, DoraSpec dora, TokenRows tokenRows, CombinedUpdate combined) {
        public static final Update NONE = new Update(List.of(), null, null);

        public Update {
            terms = List.copyOf(terms);
        }

        /** An update of one adapter. */
        public Update(List<TermSpec> terms, DoraSpec dora, TokenRows tokenRows) {
            this(terms, dora, tokenRows, null);
        }

        public boolean isEmpty() {
            return terms.isEmpty() && dora == null && tokenRows == null && combined == null;
        }
    }

    private final String name;
    private final DType dtype;
    private final long[] shape;
    private final TensorSource source;
    private final Update update;
    private final Kind kind;
    private final String note;
    private final QuantizedOutput quantizedOutput;
    private final Route route;
    /** Leading dimensions that make the rows of the matrix view: 1, or 2 for an expert stack [E, d1, d2] seen as [E·d1, d2]. */
    private final int rowDims;

    private OutputTensor(String name, DType dtype, long[] shape, TensorSource source, Update update, Kind kind, String note,
                         QuantizedOutput quantizedOutput) {
        this(name, dtype, shape, source, update, kind, note, quantizedOutput, 1);
    }

    private OutputTensor(String name, DType dtype, long[] shape, TensorSource source, Update update, Kind kind, String note,
                         QuantizedOutput quantizedOutput, int rowDims) {
        this.rowDims = rowDims;
        this.name = name;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.source = source;
        this.update = update;
        this.kind = kind;
        this.note = note;
        this.quantizedOutput = quantizedOutput;
        if (quantizedOutput != null && (!source.isQuantized() || dtype != source.dtype())) {
            throw new IllegalArgumentException(name + ": a requantized output is made from a quantized source in the source's dtype");
        }
        if (quantizedOutput != null) {
            this.route = Route.REQUANTIZE;
        } else if (update.isEmpty() && source.dtype() == dtype && !source.isQuantized()) {
            this.route = Route.BYTE_COPY;
        } else if (update.dora() != null && update.dora().axis() == DoraSpec.Axis.COLUMN) {
            this.route = Route.ROWS_AFTER_COLUMN_NORMS;
        } else {
            this.route = Route.ROWS;
        }
    }

    /** A tensor written as it is in {@code source}. */
    public static OutputTensor copy(String name, TensorSource source) {
        return new OutputTensor(name, source.dtype(), source.info().shape(), source, Update.NONE, Kind.COPY, null, null);
    }

    /** A tensor of {@code source} converted to {@code dtype}, rounded once. */
    public static OutputTensor convert(String name, DType dtype, TensorSource source) {
        return new OutputTensor(name, dtype, source.info().shape(), source, Update.NONE, Kind.CONVERT, null, null);
    }

    /** A base tensor with the adapter's {@code update} applied, rounded once to {@code dtype}. */
    public static OutputTensor merge(String name, DType dtype, TensorSource base, Update update) {
        return new OutputTensor(name, dtype, base.info().shape(), base, update, Kind.MERGE, null, null);
    }

    /** A tensor the adapter replaces with {@code replacement} (which may have another shape), with {@code update} on top. */
    public static OutputTensor replace(String name, DType dtype, TensorSource replacement, Update update) {
        return new OutputTensor(name, dtype, replacement.info().shape(), replacement, update, Kind.REPLACE, null, null);
    }

    /** A quantized weight written dense in {@code dtype}, with {@code update} applied (a plain dequantization when it is empty). */
    public static OutputTensor dequantize(String name, DType dtype, TensorSource quantized, Update update) {
        return new OutputTensor(name, dtype, quantized.info().shape(), quantized, update, update.isEmpty() ? Kind.DEQUANTIZE : Kind.MERGE,
                null, null);
    }

    /**
     * A quantized weight merged with {@code update}, rounded once to its own dtype, and requantized
     * into {@code output}.
     */
    public static OutputTensor requantize(String name, TensorSource quantized, Update update, QuantizedOutput output) {
        return new OutputTensor(name, quantized.dtype(), quantized.info().shape(), quantized, update, Kind.MERGE, null, output);
    }

    /** This tensor with a remark for the report (e.g. that lm_head was untied). */
    public OutputTensor withNote(String newNote) {
        return new OutputTensor(name, dtype, shape, source, update, kind, newNote, quantizedOutput, rowDims);
    }

    /** This tensor as if written in {@code newDtype} (what {@code verify} expects of a file that holds another dtype). */
    public OutputTensor withDtype(DType newDtype) {
        return new OutputTensor(name, newDtype, shape, source, update, kind, note, quantizedOutput, rowDims);
    }

    /**
     * This expert stack [E, d1, d2] (gpt-oss's fused experts) seen as the matrix [E·d1, d2]
     * instead of [E, d1·d2]: the same bytes, cut into rows of one expert matrix row each, so an
     * expert's low-rank term covers a range of rows (FORMATS.md §9) and a row stays far below a
     * streaming block.
     */
    public OutputTensor asExpertRows() {
        if (shape.length != 3 || quantizedOutput != null) {
            throw new IllegalArgumentException(name + " " + TensorInfo.shapeString(shape) + " is not a dense expert stack [E, d1, d2]");
        }
        return new OutputTensor(name, dtype, shape, source, update, kind, note, null, 2);
    }

    public String name() {
        return name;
    }

    /**
     * The dtype the merged values are rounded to: the written dtype, or for a requantized output
     * the quantized weight's dtype, which the rounded values are requantized from.
     */
    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    public TensorSource source() {
        return source;
    }

    public Update update() {
        return update;
    }

    public List<TermSpec> terms() {
        return update.terms();
    }

    public DoraSpec dora() {
        return update.dora();
    }

    public TokenRows tokenRows() {
        return update.tokenRows();
    }

    /** Several adapters' combined update, or null (see {@link Update#combined()}). */
    public CombinedUpdate combined() {
        return update.combined();
    }

    public Kind kind() {
        return kind;
    }

    public Route route() {
        return route;
    }

    /** A remark for the report (e.g. that lm_head was untied), or null. */
    public String note() {
        return note;
    }

    public long numElements() {
        return TensorInfo.numElements(shape);
    }

    /** Bytes written: the dense tensor, or every tensor of a requantized group. */
    public long sizeInBytes() {
        if (quantizedOutput == null) {
            return numElements() * dtype.bits() / 8;
        }
        long n = 0;
        for (SafetensorsWriter.Entry e : entries()) {
            n += e.sizeInBytes();
        }
        return n;
    }

    /** The quantized group written for this tensor, or null when it is written dense. */
    public QuantizedOutput quantizedOutput() {
        return quantizedOutput;
    }

    /** True when the tensor is written as a quantized group. */
    public boolean isRequantized() {
        return quantizedOutput != null;
    }

    /** The safetensors entries written for this tensor: itself, or its quantized group. */
    public List<SafetensorsWriter.Entry> entries() {
        return quantizedOutput == null ? List.of(new SafetensorsWriter.Entry(name, dtype, shape)) : quantizedOutput.entries(name);
    }

    /** Rows of the matrix view [shape[0], rest] (an expert stack's [shape[0]·shape[1], rest], {@link #asExpertRows}). */
    public long rows() {
        long n = 1;
        for (int i = 0; i < Math.min(rowDims, shape.length); i++) {
            n *= shape[i];
        }
        return n;
    }

    /** Columns of the matrix view. */
    public long cols() {
        long n = 1;
        for (int i = rowDims; i < shape.length; i++) {
            n *= shape[i];
        }
        return n;
    }

    /** True when the output bytes are the source bytes. */
    public boolean isByteCopy() {
        return route == Route.BYTE_COPY;
    }

    /** True when the merge arithmetic changes values (not only the dtype). */
    public boolean isAdapted() {
        return !update.isEmpty() || kind == Kind.REPLACE;
    }
}
