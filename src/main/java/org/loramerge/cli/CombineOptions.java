package org.loramerge.cli;

import java.util.List;
import org.loramerge.api.CombinationRequest;
import org.loramerge.errors.UsageException;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineException;
import org.loramerge.plan.CombineMethod;
import picocli.CommandLine.Option;

/** The options of combining several adapters, shared by {@code merge} and {@code combine} (docs/FORMATS.md §8). */
final class CombineOptions {
    @Option(names = "--weights", split = ",", paramLabel = "W1,W2,...",
            description = "one weight per --adapter, in the same order (default: 1 each); negative weights subtract")
    List<Double> weights;

    @Option(names = "--density", paramLabel = "D",
            description = "ties, dare_*, magnitude_prune: the share of each adapter's values kept, in (0, 1]")
    Double density;

    @Option(names = "--majority-sign", paramLabel = "total|frequency",
            description = "ties, dare_ties: elect each element's sign by the sum of the values (total, the default) or by their count")
    String majoritySign;

    @Option(names = "--seed", paramLabel = "S", description = "dare_*: the key of the random masks (default: 0); the same seed gives the same masks on every engine")
    Long seed;

    @Option(names = "--rank", paramLabel = "R", description = "the *svd methods: the new rank (default: the largest adapter rank, as PEFT)")
    Integer rank;

    @Option(names = "--svd-clamp", paramLabel = "Q", description = "the *svd methods: clamp the new factors to the Q-quantile of their values, as PEFT's svd_clamp")
    Double svdClamp;

    /**
     * The combination asked for: {@code method} among {@code choices}, with {@code lambda} (merge's
     * task-arithmetic family only, else null), checked by {@link CombinationRequest#combination}.
     */
    Combination combination(String method, List<CombineMethod> choices, int adapters, Double lambda, String command)
            throws UsageException, CombineException {
        return request(method, lambda).combination(choices, adapters, command);
    }

    /** These options with {@code method} and {@code lambda}, unchecked. */
    CombinationRequest request(String method, Double lambda) {
        return new CombinationRequest(method, weights, density, majoritySign, seed, rank, svdClamp, lambda);
    }
}
