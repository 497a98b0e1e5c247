package org.loramerge.cli;

import com.fasterxml.jackson.annotation.JsonAutoDetect;
import com.fasterxml.jackson.annotation.PropertyAccessor;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsException;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "merge", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Merges a PEFT LoRA adapter into its base model and writes a standard Hugging Face checkpoint.",
                "Every merged value is W + s·B·A (or DoRA's rescaling) computed exactly and rounded once. "
                        + "The output appears only when complete; the inputs are never changed."})
final class MergeCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "base model folder (config.json + model.safetensors or shards)")
    Path base;

    @Option(names = "--adapter", required = true, paramLabel = "ADAPTER_DIR", description = "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    Path adapter;

    @Option(names = "--out", required = true, paramLabel = "OUT_DIR", description = "folder to create for the merged model")
    Path out;

    @Option(names = "--dtype", defaultValue = "auto", paramLabel = "auto|f32|f16|bf16",
            description = "dtype of the floating-point tensors written (default: auto, each keeps the base's); "
                    + "with a 4-bit base, of those that are not quantized (--to decides the 4-bit weights)")
    String dtype;

    @Option(names = "--to", paramLabel = "bf16|f16|f32|nf4|fp4|int8|fp8",
            description = {"Required for a quantized base (bitsandbytes NF4/FP4/8-bit, FP8, GPTQ, AWQ): what its quantized weights become. "
                    + "bf16, f16, f32: dequantize, merge, write them dense (quantization_config is removed). "
                    + "nf4 (an NF4, GPTQ or AWQ base), fp4 (an FP4 base), int8 (an 8-bit base), fp8 (an FP8 base): dequantize, merge, "
                    + "requantize with the base's "
                    + "own settings (NF4 blocksize 64 from GPTQ/AWQ), and "
                    + "report how much of the adapter's change survives. "
                    + "--dtype still sets the tensors that are not quantized. For a base that is not quantized, --to bf16|f16|f32 "
                    + "means --dtype and a quantized --to is refused. See docs/QLORA.md."})
    String to;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda[:N]",
            description = "engine: auto (a usable GPU, else the CPU), cpu, or cuda[:N] (default: auto)")
    String device;

    @Option(names = "--max-shard-size", defaultValue = "5GB", paramLabel = "SIZE",
            description = "largest output shard, e.g. 5GB, 500MB (decimal units, as transformers) (default: 5GB)")
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

    @Option(names = "--verify", description = "before the output appears, check it as `loramerge verify` does (sampled rows of every "
            + "adapted tensor recomputed exactly, unchanged tensors compared completely) and report the worst error per tensor; fail if any is not exact")
    boolean verify;

    @Option(names = "--verify-rows", defaultValue = "16", paramLabel = "N|all",
            description = "rows per adapted tensor that --verify recomputes: N (default: 16) or all")
    String verifyRows;

    @Option(names = "--json", description = "print a JSON summary on stdout")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Option(names = "--quiet", description = "no progress line")
    boolean quiet;

    @Override
    public Integer call() throws Exception {
        DType dtypeOption = parseDtype(dtype);
        long shardSize = parseSize(maxShardSize);
        if (threads != null && threads < 1) {
            throw new UsageException("--threads " + threads + ": expected 1 or more (default: all cores)");
        }
        int verifyRowCount = VerifyCommand.parseRows("--verify-rows", verifyRows); // checked even without --verify: a typo is a typo
        int rowsToVerify = verify ? verifyRowCount : 0;
        int cpuThreads = threads != null ? threads : Runtime.getRuntime().availableProcessors();
        PrintStream err = System.err;
        long start = System.nanoTime();
        // the engine starts (CUDA context, cuBLAS, kernels: about a second) while the plan is made
        CompletableFuture<Backends.Choice> opening = openInBackground(device, cpuThreads);
        Backends.Choice choice = null;
        try (Checkpoint ckpt = openBase(base, inputs.followSymlinks); LoraAdapter lora = openAdapter(adapter, inputs.followSymlinks)) {
            MergePlan plan = Planner.plan(ckpt, lora, new PlanOptions(dtypeOption, shardSize, parseTarget(to)));
            requireAChange(plan, lora, err);
            choice = await(opening);
            double startSeconds = (System.nanoTime() - start) / 1e9;
            try (Backend backend = choice.backend()) {
                if (!quiet) {
                    if (choice.fallbackReason() != null) {
                        err.println("loramerge: no usable GPU (" + choice.fallbackReason() + "); merging on the CPU");
                    }
                    err.println("loramerge: merging " + plan.tensors().size() + " tensors (" + Progress.bytes(plan.totalBytes()) + ") on "
                            + backend.describe());
                    for (String w : plan.warnings()) {
                        err.println("warning: " + w);
                    }
                }
                MergeReport report;
                try (AtomicOutput output = AtomicOutput.create(out, overwrite, List.of(base, adapter))) {
                    Progress progress = new Progress(err, !quiet, plan.totalBytes(), plan.tensors().size());
                    report = MergeRunner.run(plan, backend, output,
                            new MergeRunner.Options(allowOverflow, Backend.DEFAULT_BLOCK_BYTES, rowsToVerify), progress);
                }
                report.startSeconds = startSeconds;
                print(report, err);
            }
        } finally {
            if (choice == null) {
                // planning failed: close the engine once it has started
                opening.thenAccept(c -> c.backend().close());
            }
        }
        return ExitCodes.OK;
    }

    private static CompletableFuture<Backends.Choice> openInBackground(String device, int cpuThreads) {
        CompletableFuture<Backends.Choice> f = new CompletableFuture<>();
        Thread t = new Thread(() -> {
            try {
                f.complete(Backends.open(device, cpuThreads));
            } catch (Throwable e) {
                f.completeExceptionally(e);
            }
        }, "loramerge-engine-start");
        t.setDaemon(true);
        t.start();
        return f;
    }

    /** The started engine, or what stopped it, as Backends.open throws it. */
    private static Backends.Choice await(CompletableFuture<Backends.Choice> opening) throws Exception {
        try {
            return opening.get();
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) {
                throw (Exception) c;
            }
            if (c instanceof Error) {
                throw (Error) c;
            }
            throw e;
        }
    }

    /** The --to option: bf16, f16, f32 (and their other spellings, as --dtype takes them), or a quantization; null when not given. */
    static QuantTarget parseTarget(String to) throws UsageException {
        if (to == null) {
            return null;
        }
        QuantTarget target = QuantTarget.parse(to);
        if (target == null) {
            throw new UsageException("--to " + to + ": expected bf16, f16, f32, or a quantization (nf4, fp4, int8, fp8)");
        }
        return target;
    }

    /** An adapter that changes nothing is a failure (an adapter saved before training, the wrong folder) unless --allow-empty-adapter. */
    private void requireAChange(MergePlan plan, LoraAdapter lora, PrintStream err) throws AdapterException {
        if (!plan.changesNothing()) {
            return;
        }
        String what = lora.keys().isEmpty() ? "holds no tensors" : "holds " + lora.keys().size() + " tensors, none of which changes the base";
        if (!allowEmptyAdapter) {
            throw new AdapterException(AdapterException.Reason.NO_CHANGE, lora.dir().resolve(LoraAdapter.WEIGHTS), what
                    + (lora.config().hasTargetRule() ? " although adapter_config.json targets modules" : "")
                    + ", so the merge would only copy the base; check that this is the adapter you meant and that it was saved after "
                    + "training (PEFT's save_pretrained), or pass --allow-empty-adapter to write the copy anyway");
        }
        if (!quiet) {
            err.println("warning: " + lora.dir().resolve(LoraAdapter.WEIGHTS) + " " + what + "; the output is a copy of the base (--allow-empty-adapter)");
        }
    }

    static Checkpoint openBase(Path dir, boolean followSymlinks) throws CliException, SafetensorsException {
        return openModel("--base", dir, followSymlinks);
    }

    /** Opens the model folder given as {@code option}; a folder that cannot be read is a bad input. */
    static Checkpoint openModel(String option, Path dir, boolean followSymlinks) throws CliException, SafetensorsException {
        try {
            return Checkpoint.open(dir, followSymlinks);
        } catch (IOException e) {
            throw new CliException(ExitCode.BAD_INPUT, option + ": " + e.getMessage(), e);
        }
    }

    static LoraAdapter openAdapter(Path dir, boolean followSymlinks) throws CliException, SafetensorsException, AdapterException {
        try {
            return LoraAdapter.open(dir, followSymlinks);
        } catch (IOException e) {
            throw new CliException(ExitCode.BAD_INPUT, "--adapter: " + e.getMessage(), e);
        }
    }

    private void print(MergeReport report, PrintStream err) throws IOException {
        if (json) {
            ObjectMapper m = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
            m.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.PUBLIC_ONLY);
            System.out.println(m.writeValueAsString(report));
        }
        if (!quiet) {
            long fallbacks = report.tensors.stream().mapToLong(MergeReport.TensorOutcome::exactFallbacks).sum();
            long rounded = report.tensors.stream().mapToLong(MergeReport.TensorOutcome::exactlyRounded).sum();
            err.println(String.format(Locale.ROOT,
                    "loramerge: wrote %s: %d tensors merged, %d replaced, %d converted, %s%d copied, %s in %d shard(s), %.1f s on %s; "
                            + "%d adapter keys applied; %d elements at a rounding boundary decided exactly, %d of them in decimal arithmetic",
                    report.output, report.tensorsMerged, report.tensorsReplaced, report.tensorsConverted,
                    report.tensorsDequantized > 0 ? report.tensorsDequantized + " dequantized, " : "", report.tensorsCopied,
                    Progress.bytes(report.bytesWritten), report.shards, report.seconds, report.engine, report.adapterKeys, rounded + fallbacks,
                    fallbacks));
            for (String n : report.notes) {
                err.println("note: " + n);
            }
            for (MergeReport.TensorOutcome t : report.tensors) {
                if (t.overflows() > 0 || t.nans() > 0) {
                    err.println("warning: " + t.name() + ": " + t.overflows() + " overflowed to ±Inf, " + t.nans() + " NaN (--allow-overflow)");
                }
            }
            if (report.requantization != null) {
                printSurvival(report.requantization, err);
            }
        }
    }

    /** Tensors listed on stderr at most; --json lists them all. */
    static final int SURVIVAL_ROWS = 20;

    /** The survival table of --to nf4 (least surviving first) and, under 50 %, the warning. */
    static void printSurvival(MergeReport.Requantization r, PrintStream err) {
        err.println("NF4 requantization: what survives of the adapter's change ΔW in the 4-bit model (docs/QLORA.md). "
                + "D = deq(Q(W+ΔW)) − deq(Q(W)); survival = ‖D‖/‖ΔW‖ (size), aligned = ⟨D,ΔW⟩/‖ΔW‖² (the part along ΔW)");
        err.println(String.format(Locale.ROOT, "  %9s  %8s  %13s  %s", "survival", "aligned", "codes changed", "tensor"));
        List<MergeReport.Survival> rows = r.worstFirst();
        for (MergeReport.Survival s : rows.subList(0, Math.min(SURVIVAL_ROWS, rows.size()))) {
            err.println(String.format(Locale.ROOT, "  %9s  %8s  %12.2f%%  %s", percent(s.survival()), percent(s.aligned()),
                    100 * s.changedShare(), s.name()));
        }
        if (rows.size() > SURVIVAL_ROWS) {
            err.println("  ... " + (rows.size() - SURVIVAL_ROWS) + " more (--json lists every tensor)");
        }
        err.println(String.format(Locale.ROOT, "  %9s  %8s  %12.2f%%  total, %d weights", percent(r.survival), percent(r.aligned),
                100 * r.changedShare, rows.size()));
        if (r.mostlyRoundedAway()) {
            String what = r.survival < MergeReport.Requantization.WARN_BELOW
                    ? "only " + percent(r.survival) + " of the adapter's change survives NF4 requantization"
                    : "the 4-bit change has " + percent(r.survival) + " of the adapter's size but only " + percent(r.aligned)
                            + " of it points the way the adapter does (" + String.format(Locale.ROOT, "%.2f%%", 100 * r.changedShare)
                            + " of the codes moved, each by a whole NF4 step)";
            err.println("warning: " + what + ": the fine-tune is mostly rounded away in this 4-bit model. Merge with --to bf16 to keep it "
                    + "(a 16-bit model), or serve the 4-bit base with the adapter unmerged");
        }
    }

    private static String percent(Double share) {
        return share == null ? "n/a" : String.format(Locale.ROOT, "%.1f%%", 100 * share);
    }

    static DType parseDtype(String s) throws UsageException {
        if (s.equalsIgnoreCase("auto")) {
            return null;
        }
        DType d = DType.parseUserName(s);
        if (d == null) {
            throw new UsageException("--dtype " + s + ": expected auto, f32, f16 or bf16");
        }
        return d;
    }

    static long parseSize(String s) throws UsageException {
        String t = s.trim().toUpperCase(Locale.ROOT);
        long mult = 1;
        String[][] units = {{"GIB", "1073741824"}, {"MIB", "1048576"}, {"KIB", "1024"}, {"GB", "1000000000"}, {"MB", "1000000"},
                {"KB", "1000"}, {"B", "1"}};
        for (String[] u : units) {
            if (t.endsWith(u[0])) {
                mult = Long.parseLong(u[1]);
                t = t.substring(0, t.length() - u[0].length()).trim();
                break;
            }
        }
        try {
            double v = Double.parseDouble(t);
            if (v <= 0) {
                throw new NumberFormatException();
            }
            return (long) (v * mult);
        } catch (NumberFormatException e) {
            throw new UsageException("--max-shard-size " + s + ": expected a size such as 5GB or 500MB");
        }
    }
}
