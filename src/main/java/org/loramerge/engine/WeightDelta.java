package org.loramerge.engine;

import java.io.IOException;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;

/**
 * One weight's difference ΔW = tuned − base [rows, cols] as {@code extract} decomposes it, opened by
 * {@link Backend#openDelta}: formed exactly in fp64 and checked when opened (NaN or ±Inf in either
 * model is bad input), then decomposed by the randomized SVD and measured against the factors as
 * written, where the engine keeps it: read again from the checkpoints on each pass (the CPU
 * engine, {@link DeltaRows}), or resident in the GPU's memory until closed. The dense combination
 * Δ of PEFT's {@code _svd} methods is one too ({@link Backend#openCombination}): recomputed from
 * the adapters' factors on each pass (the CPU engine, {@link HostCombinedDelta}), or formed once
 * in the GPU's memory.
 */
public interface WeightDelta extends AutoCloseable {
    /** ‖ΔW‖²_F, summed when opened (the CPU engine's combination: on the first call); 0 exactly when the two weights are equal. */
    double deltaSquared();

    /** The leading singular triplets of ΔW, {@link RandomizedSvd}'s algorithm with {@code options}. */
    RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException;

    /** ‖ΔW − U·Vᵀ‖²_F, U rows×r and Vᵀ r×cols: the error of factors as written. */
    double residualSquared(Matrix u, Matrix vt) throws IOException;

    /** Where ΔW is decomposed: "cpu" or "cuda:N". */
    String device();

    /** Frees what ΔW holds (device memory); once. */
    @Override
    void close();
}
