package org.loramerge.engine;

import java.io.IOException;

/**
 * Where the dense combination Δ of one of PEFT's {@code _svd} methods is formed and decomposed
 * ({@link FactorCombination#svd}): on the host ({@link HostCombinedDelta#open}, the CPU engine's),
 * or on a backend's device ({@link Backend#openCombination}).
 */
@FunctionalInterface
public interface CombinationDeltas {
    /** The CPU engine's: Δ's rows recomputed on the host for every pass of the SVD. */
    CombinationDeltas HOST = HostCombinedDelta::open;

    /**
     * Opens Δ of {@code dense}, a tensor [rows, cols] in the weight's layout whose top-D selections
     * may still be open (the handle makes them), for its SVD; the caller closes it.
     */
    WeightDelta open(DenseCombination dense, int rows, int cols) throws IOException;
}
