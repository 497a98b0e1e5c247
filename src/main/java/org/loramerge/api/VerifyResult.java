package org.loramerge.api;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import org.loramerge.plan.OutputTensor;
import org.loramerge.verify.Tolerance;
import org.loramerge.verify.Verifier;

/**
 * What {@link LoraMerge#verify} found. Immutable; the {@code verify --json} report is this record
 * with snake_case keys.
 *
 * @param passed          no problem found
 * @param tolerance       the check that ran: {@code ulp} or {@code fp32-accumulation}
 * @param toleranceDetail the check in words
 * @param maxUlp          the ulp limit in {@code ulp} mode; null otherwise
 * @param rows            rows sampled per adapted tensor
 * @param tensorsChecked  tensors compared
 * @param adaptedTensors  of those, the ones the adapter changes
 * @param worstUlp        the largest error found, in ulp of the merged dtype (0: every sampled value exact)
 * @param worstBoundShare in {@code fp32-accumulation} mode, the largest error as a share of its bound (at most 1 passes); else null
 * @param tensors         per tensor
 * @param problems        what failed, one line each
 */
public record VerifyResult(boolean passed, String tolerance, String toleranceDetail, Double maxUlp, int rows, int tensorsChecked,
                           int adaptedTensors, double worstUlp, Double worstBoundShare, List<TensorCheck> tensors, List<String> problems) {

    /** One tensor's findings; {@code worstBoundShare} as above, null where it does not apply. */
    public record TensorCheck(String name, String kind, int rowsChecked, long elementsChecked, long elementsDiffering, double worstUlp,
                              long nonFinite, boolean notApplied, String problem, Double worstBoundShare) {
    }

    static VerifyResult of(Verifier.Result r, int rows) {
        List<TensorCheck> checks = new ArrayList<>();
        int adapted = 0;
        for (Verifier.TensorCheck t : r.tensors()) {
            if (t.kind() != OutputTensor.Kind.COPY) {
                adapted++;
            }
            checks.add(new TensorCheck(t.name(), t.kind().name().toLowerCase(Locale.ROOT), t.rowsChecked(), t.elementsChecked(),
                    t.elementsDiffering(), t.worstUlp(), t.nonFinite(), t.notApplied(), t.problem(), nanToNull(t.worstBoundShare())));
        }
        boolean ulp = r.tolerance().mode() == Tolerance.Mode.ULP;
        return new VerifyResult(r.passed(), r.tolerance().cliName(), r.tolerance().describe(), ulp ? r.tolerance().maxUlp() : null, rows,
                checks.size(), adapted, r.worstUlp(), nanToNull(r.worstBoundShare()), List.copyOf(checks), List.copyOf(r.problems()));
    }

    private static Double nanToNull(double d) {
        return Double.isNaN(d) ? null : d;
    }
}
