package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.VerifyOptions;
import org.loramerge.api.VerifyResult;
import org.loramerge.errors.UsageException;
import org.loramerge.verify.Tolerance;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "verify", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Checks a merged model against base + adapter: every tensor there with the right shape, every unchanged tensor "
                + "compared completely (byte-equal), and sampled rows (or all rows) of every adapted tensor recomputed exactly, reporting "
                + "the worst error in ulp, NaN/Inf, and adapter changes that are missing. Works on any merged checkpoint, e.g. PEFT's. "
                + "The report goes to stdout and says which tolerance ran."})
final class VerifyCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "base model folder")
    Path base;

    @Option(names = "--adapter", required = true, paramLabel = "ADAPTER_DIR", description = "PEFT adapter folder")
    Path adapter;

    @Option(names = "--merged", required = true, paramLabel = "MERGED_DIR", description = "merged model folder to check")
    Path merged;

    @Option(names = "--to", paramLabel = "bf16|f16|f32|nf4|fp4|int8|fp8",
            description = "for a quantized base: the --to the merge was run with (required there)")
    String to;

    @Option(names = "--rows", defaultValue = "16", paramLabel = "N|all",
            description = "rows recomputed per adapted tensor: a sample of N (default: 16), or all; unchanged tensors are always compared completely")
    String rows;

    @Option(names = "--tolerance", defaultValue = "ulp", paramLabel = "ulp|fp32-accumulation",
            description = "what counts as correct. ulp (default): within --max-ulp of the correctly rounded merge (strict; loramerge's "
                    + "own output has 0). fp32-accumulation: within the error bound of a merge computed in fp32, element by element "
                    + "from |W| and Σ|s·U·V| (docs/FORMATS.md §10): use it for PEFT's or any other tool's output, whose F32 merges are "
                    + "many ulps from exact and still correct; a wrong scale, a missing or doubled term still fails")
    String tolerance;

    @Option(names = "--max-ulp", defaultValue = "1", paramLabel = "ULP",
            description = "with --tolerance ulp: largest error accepted, in units in the last place of the merged dtype (default: 1)")
    double maxUlp;

    @Option(names = "--json", description = "print the report as JSON on stdout instead of text (snake_case keys)")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Override
    public Integer call() throws Exception {
        Tolerance t;
        switch (tolerance.toLowerCase(Locale.ROOT)) {
            case "ulp": t = Tolerance.ulp(maxUlp); break;
            case "fp32-accumulation": case "fp32": t = Tolerance.fp32Accumulation(); break;
            default: throw new UsageException("--tolerance " + tolerance + ": expected ulp or fp32-accumulation");
        }
        VerifyResult r = LoraMerge.verify(base, adapter, merged, VerifyOptions.defaults().withRows(parseRows("--rows", rows)).withTolerance(t)
                .withTo(to).withFollowSymlinks(inputs.followSymlinks));
        PrintStream out = System.out;
        if (json) {
            CliJson.print(out, r, false);
        } else {
            String rowsChecked = r.rows() == VerifyOptions.ALL_ROWS ? "every row" : r.rows() + " rows sampled each";
            out.println(String.format(Locale.ROOT, "verify: %s: %d tensors checked (%d adapted, %s; unchanged ones completely), worst error %s ulp%s",
                    r.passed() ? "PASSED" : "FAILED", r.tensorsChecked(), r.adaptedTensors(), rowsChecked, ulps(r.worstUlp()),
                    r.worstBoundShare() == null ? "" : String.format(Locale.ROOT, " (%.3g of the fp32-accumulation bound)", r.worstBoundShare())));
            out.println("tolerance: " + r.toleranceDetail());
            for (String p : r.problems()) {
                out.println("  - " + p);
            }
            out.flush();
        }
        return r.passed() ? ExitCodes.OK : ExitCodes.VERIFY_FAILED;
    }

    private static String ulps(double v) {
        return v == Math.rint(v) && !Double.isInfinite(v) ? Long.toString((long) v) : String.format(Locale.ROOT, "%.3g", v);
    }

    /** {@code all} (every row) or a positive row count. */
    static int parseRows(String option, String value) throws UsageException {
        return LoraMerge.parseRows(option, value);
    }
}
