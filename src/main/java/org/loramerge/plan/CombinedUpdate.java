package org.loramerge.plan;

import java.util.List;

/**
 * The updates several adapters make to one output tensor and how they combine, decided in the
 * plan and computed by the engine (docs/FORMATS.md §8). Used for every method that is not a plain
 * sum of exact terms ({@link CombineMethod#isExact()} methods become several {@link TermSpec}s
 * with the weights folded into their scales).
 *
 * @param how    the combination asked for
 * @param name   the output tensor (it keys DARE's masks of the dense deltas)
 * @param module the module whose factors these are (it keys DARE's masks of the factors)
 * @param parts  the adapters that change this tensor, in command-line order
 */
public record CombinedUpdate(Combination how, String name, String module, List<Part> parts) {
    /**
     * One adapter's update of the tensor.
     *
     * @param adapter the adapter's position on the command line, from 0
     * @param term    its low-rank term, with the adapter's own scale s_i
     * @param weight  w_i
     */
    public record Part(int adapter, TermSpec term, double weight) {
    }

    public CombinedUpdate {
        parts = List.copyOf(parts);
        if (parts.isEmpty()) {
            throw new IllegalArgumentException(name + ": a combined update needs at least one part");
        }
    }

    /** The layout every part shares. */
    public Layout layout() {
        return parts.get(0).term().layout();
    }
}
