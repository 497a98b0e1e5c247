package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;

/** What a merge did, for the summary and {@code --json}. */
public final class MergeReport {
    /** One output tensor's outcome. */
    public record TensorOutcome(String name, String kind, String dtype, long[] shape, long exactFallbacks, long overflows, long nans,
                                String note) {
    }

    public String engine;
    public String output;
    public long tensorsMerged;
    public long tensorsReplaced;
    public long tensorsCopied;
    public long tensorsConverted;
    public long bytesWritten;
    public int shards;
    public long adapterKeys;
    public double seconds;
    public final List<TensorOutcome> tensors = new ArrayList<>();
    public final List<String> warnings = new ArrayList<>();
    public final List<String> notes = new ArrayList<>();
    public final List<String> copiedFiles = new ArrayList<>();
}
