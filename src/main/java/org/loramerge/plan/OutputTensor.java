package org.loramerge.plan;

import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;

/**
 * One tensor of the merged checkpoint and everything that happens to it, decided before any byte
 * is written.
 */
public final class OutputTensor {
    /** What kind of work the tensor needs. */
    public enum Kind {
        /** Bytes pass through unchanged. */
        COPY,
        /** Only a dtype conversion (rounded once). */
        CONVERT,
        /** A base tensor with LoRA terms, DoRA or token rows applied. */
        MERGE,
        /** Replaced by a tensor of the adapter (base_layer, modules_to_save, bias="all"), possibly with terms on top. */
        REPLACE,
        /** A bitsandbytes NF4 weight without adapter terms, written dense (merge --to bf16/f16/f32). */
        DEQUANTIZE
    }

    private final String name;
    private final DType dtype;
    private final long[] shape;
    private final TensorSource source;
    private final List<TermSpec> terms;
    private final DoraSpec dora;
    private final TokenRows tokenRows;
    private final Kind kind;
    private final String note;
    private final Nf4Output nf4;

    public OutputTensor(String name, DType dtype, long[] shape, TensorSource source, List<TermSpec> terms,
                        DoraSpec dora, TokenRows tokenRows, Kind kind, String note) {
        this(name, dtype, shape, source, terms, dora, tokenRows, kind, note, null);
    }

    /**
     * @param dtype the dtype the merged values are rounded to: the written dtype, or for an NF4
     *              output the quant state's dtype, which the rounded values are requantized from
     * @param nf4   null for a dense output; the NF4 group to write otherwise
     */
    public OutputTensor(String name, DType dtype, long[] shape, TensorSource source, List<TermSpec> terms,
                        DoraSpec dora, TokenRows tokenRows, Kind kind, String note, Nf4Output nf4) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.source = source;
        this.terms = List.copyOf(terms);
        this.dora = dora;
        this.tokenRows = tokenRows;
        this.kind = kind;
        this.note = note;
        this.nf4 = nf4;
        if (nf4 != null && (!source.isQuantized() || dtype != source.dtype())) {
            throw new IllegalArgumentException(name + ": an NF4 output is requantized from an NF4 source in the source's dtype");
        }
    }

    public String name() {
        return name;
    }

    public DType dtype() {
        return dtype;
    }

    public long[] shape() {
        return shape.clone();
    }

    public TensorSource source() {
        return source;
    }

    public List<TermSpec> terms() {
        return terms;
    }

    public DoraSpec dora() {
        return dora;
    }

    public TokenRows tokenRows() {
        return tokenRows;
    }

    public Kind kind() {
        return kind;
    }

    /** A remark for the report (e.g. that lm_head was untied), or null. */
    public String note() {
        return note;
    }

    public long numElements() {
        return TensorInfo.numElements(shape);
    }

    /** Bytes written: the dense tensor, or every tensor of an NF4 group. */
    public long sizeInBytes() {
        if (nf4 == null) {
            return numElements() * dtype.bits() / 8;
        }
        long n = 0;
        for (SafetensorsWriter.Entry e : entries()) {
            n += e.sizeInBytes();
        }
        return n;
    }

    /** The NF4 group written for this tensor, or null when it is written dense. */
    public Nf4Output nf4() {
        return nf4;
    }

    /** True when the tensor is written as an NF4 group (requantized). */
    public boolean isRequantized() {
        return nf4 != null;
    }

    /** The safetensors entries written for this tensor: itself, or its NF4 group. */
    public List<SafetensorsWriter.Entry> entries() {
        return nf4 == null ? List.of(new SafetensorsWriter.Entry(name, dtype, shape)) : nf4.entries(name);
    }

    /** Rows of the matrix view [shape[0], rest]. */
    public long rows() {
        return shape.length == 0 ? 1 : shape[0];
    }

    /** Columns of the matrix view [shape[0], rest]. */
    public long cols() {
        long n = 1;
        for (int i = 1; i < shape.length; i++) {
            n *= shape[i];
        }
        return n;
    }

    /** True when the output bytes are the source bytes. */
    public boolean isByteCopy() {
        return terms.isEmpty() && dora == null && tokenRows == null && source.dtype() == dtype && !source.isQuantized() && nf4 == null;
    }

    /** True when the merge arithmetic changes values (not only the dtype). */
    public boolean isAdapted() {
        return !terms.isEmpty() || dora != null || tokenRows != null || kind == Kind.REPLACE;
    }
}
