package org.loramerge.api;

import java.util.List;
import java.util.Locale;
import org.loramerge.errors.UsageException;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineException;
import org.loramerge.plan.CombineMethod;

/**
 * A combination as a user spells it, before it is checked: the method's name and the options of
 * {@code merge --combine} ({@code --weights}, {@code --density}, {@code --majority-sign},
 * {@code --seed}, {@code --rank}, {@code --svd-clamp}, {@code --lambda}); null where not given. The
 * one parser of those options, shared by the command line and batch manifests (docs/FORMATS.md §8).
 */
public record CombinationRequest(String method, List<Double> weights, Double density, String majoritySign, Long seed, Integer rank,
                                 Double svdClamp, Double lambda) {

    /** True when any option of a combination other than the method was given. */
    public boolean anyOptionGiven() {
        return weights != null || density != null || majoritySign != null || seed != null || rank != null || svdClamp != null || lambda != null;
    }

    /**
     * The combination asked for, of {@code adapters} adapters, the method among {@code choices}, for
     * {@code command} (named in messages). Options that do not apply to the method are usage errors
     * (exit 2); values out of range and a weight count that does not match are bad input (exit 3).
     */
    public Combination combination(List<CombineMethod> choices, int adapters, String command) throws UsageException, CombineException {
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

    /**
     * {@code merge}'s combination: null for one adapter without any combination option, else the
     * checked combination; several adapters without a method, or options without one, are usage errors.
     */
    public static Combination forMerge(CombinationRequest request, int adapters) throws UsageException, CombineException {
        if (request.method() == null) {
            if (adapters > 1) {
                throw new UsageException(adapters + " adapters given: choose how they combine with --combine METHOD ("
                        + CombineMethod.names(CombineMethod.forMerge()) + "; docs/FORMATS.md §8)");
            }
            if (request.anyOptionGiven()) {
                throw new UsageException("--weights, --density, --majority-sign, --seed, --rank, --svd-clamp and --lambda "
                        + "apply to a combination: add --combine METHOD");
            }
            return null;
        }
        return request.combination(CombineMethod.forMerge(), adapters, "merge");
    }

    private static void refuse(boolean given, String option, CombineMethod m) throws UsageException {
        if (given) {
            throw new UsageException(option + " does not apply to --combine " + m.cliName() + "; remove it (docs/FORMATS.md §8 lists what each method takes)");
        }
    }
}
