package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Callable;
import org.loramerge.api.CombinationRequest;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.MergeOptions;
import org.loramerge.api.MergeResult;
import org.loramerge.api.VerifyOptions;
import org.loramerge.engine.Stages;
import org.loramerge.errors.UsageException;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineException;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "merge", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Merges a PEFT LoRA adapter into its base model and writes a standard Hugging Face checkpoint.",
                "Every merged value is W + s·B·A (or DoRA's rescaling) computed exactly and rounded once. "
                        + "The output appears only when complete; the inputs are never changed.",
                "Several adapters (--adapter A1 --adapter A2 ...) are combined in the same pass with --combine METHOD: "
                        + "cat or task_arithmetic (exact: W + Σ w·s·B·A), PEFT's linear and svd methods, or ties, dare_linear, "
                        + "dare_ties, magnitude_prune on the dense deltas (docs/FORMATS.md §8)."})
final class MergeCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "base model folder (config.json + model.safetensors or shards)")
    Path base;

    @Option(names = "--adapter", required = true, paramLabel = "ADAPTER_DIR",
            description = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors); tokenizer files saved there with the "
                    + "fine-tune replace the base's; repeat it, with --combine, to combine several")
    List<Path> adapters;

    @Option(names = "--combine", paramLabel = "METHOD", description = "how several adapters combine: cat, task_arithmetic, linear, ties, "
            + "dare_linear, dare_ties, magnitude_prune, svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd (docs/FORMATS.md §8)")
    String combine;

    @Mixin
    CombineOptions combineOptions;

    @Option(names = "--lambda", paramLabel = "L", description = "task_arithmetic, ties, dare_*, magnitude_prune: multiply the combined delta by L (default: 1)")
    Double lambda;

    @Option(names = "--out", required = true, paramLabel = "OUT_DIR",
            description = "folder to create for the merged model (missing parent folders are created); checked before anything else")
    Path out;

    @Option(names = "--dtype", defaultValue = "auto", paramLabel = "auto|f32|f16|bf16",
            description = "dtype of the floating-point tensors written (default: auto, each keeps the base's); "
                    + "also accepted: fp32, float32, float, fp16, float16, half, bfloat16, in any case. "
                    + "With a quantized base, of those that are not quantized (--to decides the quantized weights)")
    String dtype;

    @Option(names = "--to", paramLabel = "bf16|f16|f32|nf4|fp4|int8|fp8",
            description = {"Required for a quantized base (bitsandbytes NF4/FP4/8-bit, FP8, GPTQ, AWQ): what its quantized weights become. "
                    + "bf16, f16, f32: dequantize, merge, write them dense (quantization_config is removed). "
                    + "nf4 (an NF4, GPTQ or AWQ base), fp4 (an FP4 base), int8 (an 8-bit base), fp8 (an FP8, GPTQ or AWQ base): dequantize, "
                    + "merge, requantize with the base's "
                    + "own settings (from GPTQ/AWQ: NF4 blocksize 64, FP8 in 128x128 blocks as transformers writes it), and "
                    + "report how much of the adapter's change survives. "
                    + "--dtype still sets the tensors that are not quantized. For a base that is not quantized, --to bf16|f16|f32 "
                    + "means --dtype and a quantized --to is refused. See docs/QLORA.md."})
    String to;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda[:N]",
            description = "engine: auto (a usable GPU, else the CPU), cpu, or cuda[:N] (default: auto)")
    String device;

    @Option(names = "--max-shard-size", defaultValue = "5GB", paramLabel = "SIZE",
            description = "largest output shard, e.g. 5GB, 500MB (decimal units, as transformers counts them). Default 5GB: the default "
                    + "of transformers' save_pretrained from 4.35 through 4.x, which wrote most published checkpoints, so the output is sharded like "
                    + "them; files of that size download, resume and load shard by shard well. transformers 5 raised its default to "
                    + "50GB; pass --max-shard-size 50GB for that layout")
    String maxShardSize;

    @Option(names = "--overwrite", description = "replace OUT_DIR if it exists (only once the new model is complete)")
    boolean overwrite;

    @Option(names = "--allow-overflow", description = "write values that overflow the output dtype as ±Inf (and NaN) instead of failing")
    boolean allowOverflow;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores)")
    Integer threads;

    @Option(names = "--allow-empty-adapter", description = "write the output even when the adapter changes no tensor "
            + "(its file holds no LoRA weights): the output is then a copy of the base")
    boolean allowEmptyAdapter;

    @Option(names = "--verify", description = "before the output appears, check it as `loramerge verify --max-ulp 0` does (sampled rows "
            + "of every adapted tensor recomputed exactly, unchanged tensors compared completely), print the result and write it into "
            + "the model card; fail if any is not exact")
    boolean verify;

    @Option(names = "--verify-rows", defaultValue = "16", paramLabel = "N|all",
            description = "rows per adapted tensor that --verify recomputes: N (default: 16) or all")
    String verifyRows;

    @Option(names = "--json", description = "print the summary as JSON on stdout (snake_case keys; a failure prints {\"error\": ...})")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Option(names = "--quiet", description = "no progress line and no summary on stderr")
    boolean quiet;

    @Option(names = "--stats", description = "print on stderr, even with --quiet, one line of where the time went, stage by stage "
            + "(the \"stages\" of --json)")
    boolean stats;

    @Override
    public Integer call() throws Exception {
        if (json) {
            CliJson.warm(sampleResult(), false);
        }
        long shardSize = LoraMerge.parseSize(maxShardSize);
        if (threads != null && threads < 1) {
            throw new UsageException("--threads " + threads + ": expected 1 or more (default: all cores)");
        }
        int verifyRowCount = VerifyCommand.parseRows("--verify-rows", verifyRows); // checked even without --verify: a typo is a typo
        PrintStream err = System.err;
        MergeOptions options = MergeOptions.defaults().withDtype(dtype).withTo(to).withDevice(device).withMaxShardSize(shardSize)
                .withOverwrite(overwrite).withAllowOverflow(allowOverflow).withThreads(threads == null ? 0 : threads)
                .withVerifyRows(verify ? verifyRowCount : 0).withLog(quiet ? null : err)
                .withFollowSymlinks(inputs.followSymlinks).withAllowEmptyAdapter(allowEmptyAdapter);
        MergeResult result = LoraMerge.merge(base, adapters, combination(), out, options);
        if (json) {
            CliJson.print(System.out, result, false);
        }
        if (!quiet) {
            print(result, err);
        }
        if (stats) {
            err.println("stages: " + Stages.line(result.stages()));
        }
        return ExitCodes.OK;
    }

    /** The combination asked for, or null for the merge of one adapter. */
    private Combination combination() throws UsageException, CombineException {
        return CombinationRequest.forMerge(combineOptions.request(combine, lambda), adapters.size());
    }

    private static void print(MergeResult r, PrintStream err) {
        long fallbacks = r.tensors().stream().mapToLong(MergeResult.TensorResult::exactFallbacks).sum();
        long rounded = r.tensors().stream().mapToLong(MergeResult.TensorResult::exactlyRounded).sum();
        err.println(String.format(Locale.ROOT,
                "loramerge: wrote %s: %d tensors merged, %d replaced, %d converted, %s%d copied, %s in %d shard(s), %.1f s on %s; "
                        + "%d adapter keys applied; %d elements at a rounding boundary decided exactly, %d of them in decimal arithmetic",
                r.output(), r.tensorsMerged(), r.tensorsReplaced(), r.tensorsConverted(),
                r.tensorsDequantized() > 0 ? r.tensorsDequantized() + " dequantized, " : "", r.tensorsCopied(),
                Progress.bytes(r.bytesWritten()), r.shards(), r.seconds(), r.engine(), r.adapterKeys(), rounded + fallbacks, fallbacks));
        if (r.verifiedRows() > 0) {
            double worst = r.verifiedWorstUlp().values().stream().mapToDouble(Double::doubleValue).max().orElse(0);
            String rows = r.verifiedRows() == VerifyOptions.ALL_ROWS ? "every row" : r.verifiedRows() + " sampled rows each";
            err.println(String.format(Locale.ROOT, "verify: PASSED: %d adapted tensors, %s recomputed exactly, unchanged tensors compared "
                    + "completely, worst error %s ulp (mode ulp, --max-ulp 0)", r.verifiedWorstUlp().size(), rows, ulps(worst)));
        }
        for (String n : r.notes()) {
            err.println("note: " + n);
        }
        for (MergeResult.TensorResult t : r.tensors()) {
            if (t.overflows() > 0 || t.nans() > 0) {
                err.println("warning: " + t.name() + ": " + t.overflows() + " overflowed to ±Inf, " + t.nans() + " NaN (--allow-overflow)");
            }
        }
        if (r.requantization() != null) {
            printSurvival(r.requantization(), err);
        }
    }

    private static String ulps(double v) {
        return v == Math.rint(v) ? Long.toString((long) v) : String.format(Locale.ROOT, "%.3g", v);
    }

    /** Tensors listed on stderr at most; --json lists them all. */
    static final int SURVIVAL_ROWS = 20;

    /** The survival table of a quantized --to (nf4, fp4, int8, fp8; least surviving first) and, under 50 %, the warning. */
    static void printSurvival(MergeResult.Requantization r, PrintStream err) {
        err.println("Requantization: what survives of the adapter's change ΔW in the quantized model (docs/QLORA.md). "
                + "D = deq(Q(W+ΔW)) − deq(Q(W)); survival = ‖D‖/‖ΔW‖ (size), aligned = ⟨D,ΔW⟩/‖ΔW‖² (the part along ΔW)");
        err.println(String.format(Locale.ROOT, "  %9s  %8s  %13s  %s", "survival", "aligned", "codes changed", "tensor"));
        List<MergeResult.Survival> rows = r.worstFirst();
        for (MergeResult.Survival s : rows.subList(0, Math.min(SURVIVAL_ROWS, rows.size()))) {
            err.println(String.format(Locale.ROOT, "  %9s  %8s  %12.2f%%  %s", percent(s.survival()), percent(s.aligned()),
                    100 * s.changedShare(), s.name()));
        }
        if (rows.size() > SURVIVAL_ROWS) {
            err.println("  ... " + (rows.size() - SURVIVAL_ROWS) + " more (--json lists every tensor)");
        }
        err.println(String.format(Locale.ROOT, "  %9s  %8s  %12.2f%%  total, %d weights", percent(r.survival()), percent(r.aligned()),
                100 * r.changedShare(), rows.size()));
        if (r.mostlyRoundedAway()) {
            String what = r.survival() < MergeResult.Requantization.WARN_BELOW
                    ? "only " + percent(r.survival()) + " of the adapter's change survives requantization"
                    : "the quantized change has " + percent(r.survival()) + " of the adapter's size but only " + percent(r.aligned())
                            + " of it points the way the adapter does (" + String.format(Locale.ROOT, "%.2f%%", 100 * r.changedShare())
                            + " of the codes moved, each by a whole quantization step)";
            err.println("warning: " + what + ": the fine-tune is mostly rounded away in this quantized model. Merge with --to bf16 to keep "
                    + "it (a 16-bit model), or serve the quantized base with the adapter unmerged");
        }
    }

    private static String percent(Double share) {
        return share == null ? "n/a" : String.format(Locale.ROOT, "%.1f%%", 100 * share);
    }

    /** A result with one of each part, for {@link CliJson#warm}. */
    static MergeResult sampleResult() {
        return new MergeResult("", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                List.of(new MergeResult.TensorResult("", "", "", List.of(1L), 0, 0, 0, 0, "")), List.of(""), List.of(""), List.of(""), 0,
                Map.of("", 0.0), new MergeResult.Requantization(0, 0, 0, 0, 0.0, 0.0, 0, false,
                        List.of(new MergeResult.Survival("", List.of(1L), 0, false, 0, 0, 0, 0, 0, 0, 0.0, 0.0))),
                Map.of("", new Stages.Total("", 0, 0, 0)));
    }
}
