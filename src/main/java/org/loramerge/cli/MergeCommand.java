package org.loramerge.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Backends;
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
import picocli.CommandLine.Command;
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
            description = "dtype of the floating-point tensors written (default: auto, each keeps the base's)")
    String dtype;

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

    @Option(names = "--json", description = "print a JSON summary on stdout")
    boolean json;

    @Option(names = "--quiet", description = "no progress line")
    boolean quiet;

    @Override
    public Integer call() throws Exception {
        PlanOptions planOptions = new PlanOptions(parseDtype(dtype), parseSize(maxShardSize));
        int cpuThreads = threads != null ? threads : Runtime.getRuntime().availableProcessors();
        PrintStream err = System.err;
        try (Checkpoint ckpt = openBase(base); LoraAdapter lora = openAdapter(adapter)) {
            MergePlan plan = Planner.plan(ckpt, lora, planOptions);
            Backends.Choice choice = Backends.open(device, cpuThreads);
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
                            new MergeRunner.Options(overwrite, allowOverflow, MergeRunner.DEFAULT_BLOCK_BYTES), progress);
                }
                print(report, err);
            }
        }
        return ExitCodes.OK;
    }

    static Checkpoint openBase(Path dir) throws CliException, SafetensorsException {
        try {
            return Checkpoint.open(dir);
        } catch (IOException e) {
            throw new CliException(ExitCodes.BAD_INPUT, "--base: " + e.getMessage(), e);
        }
    }

    static LoraAdapter openAdapter(Path dir) throws CliException, SafetensorsException, AdapterException {
        try {
            return LoraAdapter.open(dir);
        } catch (IOException e) {
            throw new CliException(ExitCodes.BAD_INPUT, "--adapter: " + e.getMessage(), e);
        }
    }

    private void print(MergeReport report, PrintStream err) throws IOException {
        if (json) {
            ObjectMapper m = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
            m.setVisibility(com.fasterxml.jackson.annotation.PropertyAccessor.FIELD, com.fasterxml.jackson.annotation.JsonAutoDetect.Visibility.PUBLIC_ONLY);
            System.out.println(m.writeValueAsString(report));
        }
        if (!quiet) {
            long fallbacks = report.tensors.stream().mapToLong(MergeReport.TensorOutcome::exactFallbacks).sum();
            err.println(String.format(Locale.ROOT,
                    "loramerge: wrote %s: %d tensors merged, %d replaced, %d converted, %d copied, %s in %d shard(s), %.1f s on %s; "
                            + "%d adapter keys applied; %d elements decided by the exact fallback",
                    report.output, report.tensorsMerged, report.tensorsReplaced, report.tensorsConverted, report.tensorsCopied,
                    Progress.bytes(report.bytesWritten), report.shards, report.seconds, report.engine, report.adapterKeys, fallbacks));
            for (String n : report.notes) {
                err.println("note: " + n);
            }
            for (MergeReport.TensorOutcome t : report.tensors) {
                if (t.overflows() > 0 || t.nans() > 0) {
                    err.println("warning: " + t.name() + ": " + t.overflows() + " overflowed to ±Inf, " + t.nans() + " NaN (--allow-overflow)");
                }
            }
        }
    }

    static DType parseDtype(String s) {
        if (s.equalsIgnoreCase("auto")) {
            return null;
        }
        DType d = DType.parseUserName(s);
        if (d == null) {
            throw new IllegalArgumentException("--dtype " + s + ": expected auto, f32, f16 or bf16");
        }
        return d;
    }

    static long parseSize(String s) {
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
            throw new IllegalArgumentException("--max-shard-size " + s + ": expected a size such as 5GB or 500MB");
        }
    }
}
