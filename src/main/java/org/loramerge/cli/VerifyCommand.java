package org.loramerge.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.verify.Verifier;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "verify", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Checks a merged model against base + adapter: every tensor there with the right shape, every unchanged tensor "
                + "compared completely (byte-equal), and sampled rows (or all rows) of every adapted tensor recomputed exactly, reporting "
                + "the worst error in ulp, NaN/Inf, and adapter changes that are missing. Works on any merged checkpoint, e.g. PEFT's."})
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

    @Option(names = "--max-ulp", defaultValue = "1", paramLabel = "ULP",
            description = "largest error accepted, in units in the last place of the merged dtype (default: 1; loramerge's own output has 0)")
    double maxUlp;

    @Option(names = "--json", description = "print the findings as JSON on stdout")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Override
    public Integer call() throws Exception {
        try (Checkpoint b = MergeCommand.openBase(base, inputs.followSymlinks); LoraAdapter a = MergeCommand.openAdapter(adapter, inputs.followSymlinks);
             Checkpoint m = MergeCommand.openModel("--merged", merged, inputs.followSymlinks)) {
            MergePlan plan = Planner.plan(b, a, new PlanOptions(null, PlanOptions.DEFAULT_MAX_SHARD_SIZE, MergeCommand.parseTarget(to)));
            Verifier.Result result = Verifier.verify(plan, m, parseRows("--rows", rows), maxUlp);
            if (json) {
                ObjectMapper om = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
                System.out.println(om.writeValueAsString(result));
            }
            long adapted = result.tensors().stream().filter(t -> t.kind() != OutputTensor.Kind.COPY).count();
            System.err.println(String.format(Locale.ROOT, "verify: %d tensors checked (%d adapted), worst error %.3g ulp, %s",
                    result.tensors().size(), adapted, result.worstUlp(), result.passed() ? "PASSED" : "FAILED"));
            for (String p : result.problems()) {
                System.err.println("  - " + p);
            }
            return result.passed() ? ExitCodes.OK : ExitCodes.VERIFY_FAILED;
        }
    }

    /** {@code all} (every row) or a positive row count. */
    static int parseRows(String option, String value) throws UsageException {
        if (value.equalsIgnoreCase("all")) {
            return Verifier.ALL_ROWS;
        }
        try {
            int n = Integer.parseInt(value.trim());
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // the message below
        }
        throw new UsageException(option + " " + value + ": expected a positive number of rows, or all");
    }
}
