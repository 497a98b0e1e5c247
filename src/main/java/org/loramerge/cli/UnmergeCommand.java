package org.loramerge.cli;

import com.fasterxml.jackson.annotation.JsonAutoDetect;
import com.fasterxml.jackson.annotation.PropertyAccessor;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.api.LoraMerge;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Tuning;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.UnmergePlanner;
import org.loramerge.verify.UlpDistance;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "unmerge", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Takes a LoRA adapter back out of a merged model: W = W' − s·B·A for every adapted weight, computed exactly and "
                + "rounded once (the merge engines, with the terms negated).",
                "DoRA, tensors the adapter replaced (modules_to_save), trainable tokens and LoRA on a tied lm_head cannot be undone from "
                        + "the merged model alone: they are refused unless --base gives the original to take them from. With --base the "
                        + "report says how far the result lands from it."})
final class UnmergeCommand implements Callable<Integer> {
    @Option(names = "--merged", required = true, paramLabel = "MODEL_DIR", description = "the merged model")
    Path merged;

    @Option(names = "--adapter", required = true, paramLabel = "ADAPTER_DIR", description = "the PEFT adapter that was merged into it")
    Path adapter;

    @Option(names = "--out", required = true, paramLabel = "OUT_DIR", description = "folder to create for the recovered base")
    Path out;

    @Option(names = "--base", paramLabel = "MODEL_DIR",
            description = "the original base, when at hand: what cannot be undone is taken from it, the output gets its tensors, dtypes and "
                    + "config.json, and the report measures the distance to it in ulps")
    Path base;

    @Option(names = "--dtype", defaultValue = "auto", paramLabel = "auto|f32|f16|bf16",
            description = "dtype of the floating-point tensors written (default: auto, the base's with --base, else the merged model's)")
    String dtype;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda[:N]",
            description = "engine: auto (a usable GPU, else the CPU), cpu, or cuda[:N] (default: auto)")
    String device;

    @Option(names = "--max-shard-size", defaultValue = "5GB", paramLabel = "SIZE", description = "largest output shard (default: 5GB)")
    String maxShardSize;

    @Option(names = "--overwrite", description = "replace OUT_DIR if it exists (only once the new model is complete)")
    boolean overwrite;

    @Option(names = "--allow-overflow", description = "write values that overflow the output dtype as ±Inf (and NaN) instead of failing")
    boolean allowOverflow;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores)")
    Integer threads;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Option(names = "--json", description = "print a JSON summary on stdout")
    boolean json;

    @Option(names = "--quiet", description = "no progress line")
    boolean quiet;

    /** The --json document: the run, and the distance to --base when given. */
    record Report(MergeReport unmerge, UlpDistance.Result distanceToBase) {
    }

    @Override
    public Integer call() throws Exception {
        PlanOptions options = new PlanOptions(LoraMerge.parseDtype(dtype), LoraMerge.parseSize(maxShardSize));
        if (threads != null && threads < 1) {
            throw new UsageException("--threads " + threads + ": expected 1 or more (default: all cores)");
        }
        int cpuThreads = threads != null ? threads : Runtime.getRuntime().availableProcessors();
        PrintStream err = System.err;
        List<Path> inputDirs = new ArrayList<>(List.of(merged, adapter));
        if (base != null) {
            inputDirs.add(base);
        }
        try (Checkpoint m = LoraMerge.openModel("--merged", merged, inputs.followSymlinks);
             LoraAdapter lora = LoraMerge.openAdapter(adapter, inputs.followSymlinks);
             Checkpoint b = base == null ? null : LoraMerge.openModel("--base", base, inputs.followSymlinks)) {
            MergePlan plan = UnmergePlanner.plan(m, lora, b, options);
            MergeReport report;
            Tuning tuning = LoraMerge.tuning();
            // the output first, so that the engine's workers suit the file system it is written into, as merge does
            try (AtomicOutput output = AtomicOutput.create(out, overwrite, inputDirs)) {
                Backends.Choice choice = Backends.open(device, cpuThreads, LoraMerge.parallelWrites(tuning, output.dir()));
                try (Backend backend = choice.backend()) {
                    if (!quiet) {
                        if (choice.fallbackReason() != null) {
                            err.println("loramerge: no usable GPU (" + choice.fallbackReason() + "); unmerging on the CPU");
                        }
                        err.println("loramerge: unmerging " + adapter + " from " + plan.tensors().size() + " tensors (" + Progress.bytes(plan.totalBytes())
                                + ") on " + backend.describe());
                    }
                    Progress progress = new Progress(err, !quiet, plan.totalBytes(), plan.tensors().size(), "unmerging");
                    report = MergeRunner.run(plan, backend, output, new MergeRunner.Options(allowOverflow, 0, tuning), progress);
                }
            }
            UlpDistance.Result distance = null;
            if (b != null) {
                List<String> computed = new ArrayList<>();
                for (OutputTensor t : plan.tensors()) {
                    if (!t.terms().isEmpty()) {
                        computed.add(t.name());
                    }
                }
                try (Checkpoint result = Checkpoint.open(out)) {
                    distance = UlpDistance.measure(result, b, m, computed);
                }
            }
            print(report, distance, err);
        }
        return ExitCodes.OK;
    }

    private void print(MergeReport report, UlpDistance.Result distance, PrintStream err) throws IOException {
        if (json) {
            ObjectMapper mapper = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
            mapper.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.PUBLIC_ONLY);
            System.out.println(mapper.writeValueAsString(new Report(report, distance)));
        }
        if (quiet) {
            return;
        }
        long fallbacks = report.tensors.stream().mapToLong(MergeReport.TensorOutcome::exactFallbacks).sum();
        err.println(String.format(Locale.ROOT, "loramerge: wrote %s: %d tensors unmerged, %d copied, %d converted, %s in %d shard(s), %.1f s on %s; "
                        + "%d elements decided by the exact fallback", report.output, report.tensorsMerged, report.tensorsCopied, report.tensorsConverted,
                Progress.bytes(report.bytesWritten), report.shards, report.seconds, report.engine, fallbacks));
        report.notes.forEach(n -> err.println("note: " + n));
        report.warnings.forEach(w -> err.println("warning: " + w));
        if (distance != null) {
            err.println(String.format(Locale.ROOT, "distance to --base over the %d unmerged tensors (%d elements): %.4f%% equal, %.4f%% within 1 ulp, "
                            + "%d beyond 1 ulp; worst %.3g ulp of the original value, %.3g ulp of the merged value",
                    distance.tensors().size(), distance.elements(), share(distance.equal(), distance.elements()),
                    share(distance.withinOneUlp(), distance.elements()), distance.beyondOneUlp(), distance.worstUlp(), distance.worstMergedUlp()));
        }
    }

    private static double share(long part, long whole) {
        return whole == 0 ? 100 : 100.0 * part / whole;
    }
}
