package org.loramerge.cli;

import java.util.List;
import java.util.Locale;
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
     * task-arithmetic family only, else null). Options that do not apply to the method are usage
     * errors (exit 2); values out of range and a weight count that does not match are bad input (exit 3).
     */
    Combination combination(String method, List<CombineMethod> choices, int adapters, Double lambda, String command)
            throws UsageException, CombineException {
        CombineMethod m = CombineMethod.parse(method, choices);
        if (m == null) {
            throw new UsageException("--combine " + method + ": " + command + " takes " + CombineMethod.names(choices) + "; use one of those");
        }
        refuse(density != null && !m.usesDensity(), "--density", m);
        refuse(majoritySign != null && !m.usesMajoritySign(), "--majority-sign", m);
        refuse(seed != null && !m.isRandom(), "--seed", m);
        refuse(rank != null && m.operand() != CombineMethod.Operand.SVD, "--rank", m);
        refuse(svdClamp != null && m.operand() != CombineMethod.Operand.SVD, "--svd-clamp", m);
        refuse(lambda != null && m.family() != CombineMethod.Family.TASK_ARITHMETIC, "--lambda", m);
        if (m.usesDensity() && density == null) {
            throw new UsageException("--combine " + m.cliName() + " needs --density D, the share of each adapter's values kept, in (0, 1]; add e.g. --density 0.5");
        }
        Combination.MajoritySign sign = Combination.MajoritySign.TOTAL;
        if (majoritySign != null) {
            try {
                sign = Combination.MajoritySign.valueOf(majoritySign.toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new UsageException("--majority-sign " + majoritySign + ": expected total or frequency");
            }
        }
        return Combination.of(m, adapters, weights, density == null ? 1.0 : density, sign, lambda == null ? 1.0 : lambda,
                seed == null ? 0 : seed, rank == null ? 0 : rank, svdClamp);
    }

    /** True when any option of a combination was given. */
    boolean anyGiven() {
        return weights != null || density != null || majoritySign != null || seed != null || rank != null || svdClamp != null;
    }

    private static void refuse(boolean given, String option, CombineMethod m) throws UsageException {
        if (given) {
            throw new UsageException(option + " does not apply to --combine " + m.cliName() + "; remove it (docs/FORMATS.md §8 lists what each method takes)");
        }
    }
}
