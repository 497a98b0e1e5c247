package org.loramerge.pipeline;

import java.util.ArrayList;
import java.util.List;

/** What {@code combine} wrote, for the summary and {@code --json}. */
public final class CombineReport {
    /** One module of the new adapter. */
    public record ModuleOutcome(String module, int adapters, int rank, long[] aShape, long[] bShape) {
    }

    public String output;
    public String method;
    public int rank;
    public String dtype;
    /** The engine that formed and decomposed the {@code _svd} methods' dense Δ: "cpu (N threads)", "cuda:0 NVIDIA H200". */
    public String engine;
    public final List<ModuleOutcome> modules = new ArrayList<>();
    public final List<String> warnings = new ArrayList<>();
    public final List<String> notes = new ArrayList<>();
    public double seconds;
}
