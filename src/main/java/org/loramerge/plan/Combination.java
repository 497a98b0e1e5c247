package org.loramerge.plan;

import java.util.Collections;
import java.util.List;
import java.util.Locale;

/**
 * What the user asked of a combination of several adapters: the method, one weight per adapter
 * (in command-line order) and the method's parameters. Checked when made.
 *
 * @param method   how the updates combine
 * @param weights  w_i, one per adapter
 * @param density  D in (0, 1]: the share of elements kept (top-D by magnitude, or DARE's keep
 *                 probability); 1 keeps all
 * @param majority how TIES elects the sign of an element
 * @param lambda   λ, the factor of the task-arithmetic family's result (1 for PEFT's methods)
 * @param seed     the key of DARE's random masks
 * @param rank     the SVD methods' rank R, or 0 for PEFT's default (the largest adapter rank)
 * @param svdClamp PEFT's svd_clamp (a quantile of the new factors' values), or null for none
 */
public record Combination(CombineMethod method, List<Double> weights, double density, MajoritySign majority, double lambda, long seed,
                          int rank, Double svdClamp) {

    /** TIES' sign election (peft utils/merge_utils.py calculate_majority_sign_mask). */
    public enum MajoritySign {
        /** The sign of the sum of the trimmed values. */
        TOTAL,
        /** The sign held by more of the trimmed values (ties go to +). */
        FREQUENCY;

        public String cliName() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    public Combination {
        weights = List.copyOf(weights);
    }

    /**
     * A combination of {@code adapters} adapters; {@code weights} null means 1 each.
     *
     * @throws CombineException for a weight count that does not match, or a parameter out of range
     */
    public static Combination of(CombineMethod method, int adapters, List<Double> weights, double density, MajoritySign majority,
                                 double lambda, long seed, int rank, Double svdClamp) throws CombineException {
        if (weights == null) {
            weights = Collections.nCopies(adapters, 1.0);
        }
        if (weights.size() != adapters) {
            throw new CombineException(CombineException.Reason.WEIGHTS, "--weights gives " + weights.size() + " weight"
                    + (weights.size() == 1 ? "" : "s") + " for " + adapters + " adapters; give one per --adapter, in the same order "
                    + "(e.g. --weights " + String.join(",", Collections.nCopies(adapters, "1.0")) + ")");
        }
        for (double w : weights) {
            if (!Double.isFinite(w)) {
                throw new CombineException(CombineException.Reason.WEIGHTS, "--weights holds " + w + "; give a finite number for every adapter");
            }
        }
        if (!(density > 0 && density <= 1)) {
            throw new CombineException(CombineException.Reason.PARAMETER, "--density " + density
                    + " is outside (0, 1]: it is the share of each adapter's values kept; give a value such as 0.5 (1 keeps all, 0.2 keeps a fifth)");
        }
        if (!Double.isFinite(lambda)) {
            throw new CombineException(CombineException.Reason.PARAMETER, "--lambda " + lambda + " is not a finite number; give one such as 1.0");
        }
        if (rank < 0) {
            throw new CombineException(CombineException.Reason.PARAMETER, "--rank " + rank + ": give a rank of 1 or more");
        }
        if (svdClamp != null && !(svdClamp >= 0 && svdClamp <= 1)) {
            throw new CombineException(CombineException.Reason.PARAMETER, "--svd-clamp " + svdClamp + " is outside [0, 1]: it is a quantile "
                    + "of the new factors' values, as PEFT's svd_clamp (e.g. 0.99)");
        }
        return new Combination(method, weights, density, majority, lambda, seed, rank, svdClamp);
    }

    /** This combination with the SVD methods' rank set. */
    public Combination withRank(int newRank) {
        return new Combination(method, weights, density, majority, lambda, seed, newRank, svdClamp);
    }

    /** The weight of adapter {@code i}. */
    public double weight(int i) {
        return weights.get(i);
    }

    /** For the report: the method and the parameters that apply to it. */
    public String describe() {
        StringBuilder s = new StringBuilder(method.cliName()).append(" (weights ").append(weights);
        if (method.usesDensity()) {
            s.append(", density ").append(density);
        }
        if (method.usesMajoritySign()) {
            s.append(", majority sign ").append(majority.cliName());
        }
        if (method.isRandom()) {
            s.append(", seed ").append(seed);
        }
        if (method.family() == CombineMethod.Family.TASK_ARITHMETIC) {
            s.append(", lambda ").append(lambda);
        }
        if (method.operand() == CombineMethod.Operand.SVD) {
            s.append(", rank ").append(rank == 0 ? "the largest adapter rank" : Integer.toString(rank));
            if (svdClamp != null) {
                s.append(", svd clamp ").append(svdClamp);
            }
        }
        return s.append(')').toString();
    }
}
