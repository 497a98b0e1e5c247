package org.loramerge.plan;

import java.util.List;
import org.loramerge.format.DType;
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
        REPLACE
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

    public OutputTensor(String name, DType dtype, long[] shape, TensorSource source, List<TermSpec> terms,
                        DoraSpec dora, TokenRows tokenRows, Kind kind, String note) {
        this.name = name;
        this.dtype = dtype;
        this.shape = shape.clone();
        this.source = source;
        this.terms = List.copyOf(terms);
        this.dora = dora;
        this.tokenRows = tokenRows;
        this.kind = kind;
        this.note = note;
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

    public long sizeInBytes() {
        return numElements() * dtype.bits() / 8;
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
        return terms.isEmpty() && dora == null && tokenRows == null && source.dtype() == dtype;
    }

    /** True when the merge arithmetic changes values (not only the dtype). */
    public boolean isAdapted() {
        return !terms.isEmpty() || dora != null || tokenRows != null || kind == Kind.REPLACE;
    }
}
