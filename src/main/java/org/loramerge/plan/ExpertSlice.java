package org.loramerge.plan;

/**
 * The part of a fused expert parameter [E, d1, d2] that one {@link Layout#EXPERT} term updates
 * (FORMATS.md §3, §9): rows {@code [expertRow0, expertRow0 + rows)} of expert {@code expert}'s
 * [d1, d2] matrix, which are rows {@code [outputRow0, outputRow0 + rows)} of the output tensor's
 * matrix view: a per-expert checkpoint tensor holds one expert's rows (or a part of them, such as
 * Mixtral's w1, the first half of gate_up_proj) from its row 0; gpt-oss's fused tensor, viewed as
 * [E·d1, d2], holds expert e at rows e·d1.
 *
 * @param expert     e
 * @param experts    E
 * @param transposed the parameter is laid out [E, in, out] (transformers' is_transposed), so ΔW[e] = (B_e·A_e)ᵀ
 * @param expertRow0 the first row of the expert's matrix the term updates
 * @param outputRow0 the output matrix row that holds it
 * @param rows       how many rows
 */
public record ExpertSlice(int expert, int experts, boolean transposed, long expertRow0, long outputRow0, long rows) {
    public ExpertSlice {
        if (expert < 0 || expert >= experts || expertRow0 < 0 || outputRow0 < 0 || rows <= 0) {
            throw new IllegalArgumentException("expert slice " + expert + "/" + experts + " rows " + expertRow0 + "+" + rows + " at " + outputRow0);
        }
    }
}
