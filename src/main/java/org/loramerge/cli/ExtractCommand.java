package org.loramerge.cli;

import com.fasterxml.jackson.annotation.JsonAutoDetect;
import com.fasterxml.jackson.annotation.PropertyAccessor;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.LoraMerge;
import org.loramerge.engine.Backend;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.ExtractReport;
import org.loramerge.pipeline.ExtractRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.ExtractOptions;
import org.loramerge.plan.ExtractPlan;
import org.loramerge.plan.ExtractPlanner;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "extract", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Extracts a LoRA adapter from a fine-tuned model: per targeted weight, the difference ΔW = tuned − base "
                + "(exact in fp64) is approximated by a truncated SVD and written as a PEFT adapter folder that PEFT loads and merges.",
                "Weights whose ΔW is zero are left out; other changed tensors (norms, biases, a resized vocabulary, untargeted "
                        + "weights) are saved whole or reported (--others). The output appears only when complete."})
final class ExtractCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "the model that was fine-tuned")
    Path base;

    @Option(names = "--tuned", required = true, paramLabel = "MODEL_DIR", description = "the fine-tuned model (same architecture and tensors)")
    Path tuned;

    @Option(names = "--out", required = true, paramLabel = "ADAPTER_DIR", description = "folder to create for the adapter")
    Path out;

    @Option(names = "--rank", paramLabel = "R", description = "rank of every module (default: 32 unless --energy)")
    Integer rank;

    @Option(names = "--energy", paramLabel = "SHARE",
            description = "instead of one rank: per module the smallest rank that keeps this share of ‖ΔW‖²_F (e.g. 0.95), up to --max-rank")
    Double energy;

    @Option(names = "--max-rank", defaultValue = "256", paramLabel = "R", description = "the largest rank --energy may choose (default: 256)")
    int maxRank;

    @Option(names = "--target", defaultValue = "all-linear", paramLabel = "all-linear|NAMES",
            description = "all-linear (every Linear/Conv1D weight but embeddings and the output head, as PEFT expands it) or "
                    + "comma-separated module names, matched as PEFT's target_modules list (default: all-linear)")
    String target;

    @Option(names = "--embeddings", description = "also give the input embedding (a LoRA embedding) and the output head low-rank factors")
    boolean embeddings;

    @Option(names = "--others", defaultValue = "save", paramLabel = "save|report",
            description = "changed tensors a LoRA pair cannot express: save writes them whole (modules_to_save; a targeted layer's "
                    + "bias with bias \"lora_only\"), report leaves them out and lists them (default: save)")
    String others;

    @Option(names = "--dtype", defaultValue = "auto", paramLabel = "auto|f32|bf16|f16",
            description = "dtype of the factors (default: auto, each base weight's own; f32 keeps the most)")
    String dtype;

    @Option(names = "--check-optimal", description = "per module, also compute the exact optimal rank-r error (Eckart–Young) from ΔW's "
            + "Gram matrix and report the SVD's ratio to it; slow (a full eigenvalue problem per module)")
    boolean checkOptimal;

    @Option(names = "--power-iterations", defaultValue = "" + RandomizedSvd.Options.DEFAULT_POWER_ITERATIONS, paramLabel = "Q",
            description = "subspace iterations of the randomized SVD; each is two more passes over ΔW (default: ${DEFAULT-VALUE})")
    int powerIterations;

    @Option(names = "--oversampling", defaultValue = "" + RandomizedSvd.Options.DEFAULT_OVERSAMPLING, paramLabel = "P",
            description = "extra sketch columns of the randomized SVD (default: ${DEFAULT-VALUE})")
    int oversampling;

    @Option(names = "--seed", defaultValue = "" + RandomizedSvd.Options.DEFAULT_SEED, paramLabel = "N",
            description = "seed of the randomized SVD's test matrix; a run is deterministic (default: ${DEFAULT-VALUE})")
    long seed;

    @Option(names = "--base-model-name", paramLabel = "NAME",
            description = "base_model_name_or_path for adapter_config.json (default: --base as given)")
    String baseModelName;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda[:N]",
            description = "where the SVDs run: auto (a usable GPU, else the CPU), cpu, or cuda[:N] (default: auto). On the GPU each "
                    + "weight's ΔW is formed and kept in device memory and the SVD's products and QRs run there")
    String device;

    @Option(names = "--threads", paramLabel = "N", description = "CPU threads (default: all cores)")
    Integer threads;

    @Option(names = "--overwrite", description = "replace ADAPTER_DIR if it exists (only once the new adapter is complete)")
    boolean overwrite;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Option(names = "--json", description = "print the report as JSON on stdout")
    boolean json;

    @Option(names = "--quiet", description = "no progress line and no table")
    boolean quiet;

    /** Modules listed on stderr at most; --json lists them all. */
    static final int TABLE_ROWS = 20;
    static final int DEFAULT_RANK = 32;

    @Override
    public Integer call() throws Exception {
        ExtractOptions options = options();
        int cpuThreads = threads != null ? threads : Runtime.getRuntime().availableProcessors();
        if (cpuThreads < 1) {
            throw new UsageException("--threads " + threads + ": expected 1 or more (default: all cores)");
        }
        if (powerIterations < 0 || oversampling < 0) {
            throw new UsageException("--power-iterations and --oversampling must be 0 or more");
        }
        PrintStream err = System.err;
        try (Checkpoint b = LoraMerge.openModel("--base", base, inputs.followSymlinks);
             Checkpoint t = LoraMerge.openModel("--tuned", tuned, inputs.followSymlinks)) {
            ExtractPlan plan = ExtractPlanner.plan(b, t, options);
            ExtractReport report;
            Backends.Choice choice = Backends.open(device, cpuThreads);
            try (Backend backend = choice.backend();
                 AtomicOutput output = AtomicOutput.create(out, overwrite, List.of(base, tuned))) {
                if (!quiet) {
                    if (choice.fallbackReason() != null) {
                        err.println("loramerge: no usable GPU (" + choice.fallbackReason() + "); extracting on the CPU");
                    }
                    err.println("loramerge: extracting " + plan.targets().size() + " weights of " + base + " at "
                            + (energy == null ? "rank " + options.rank() : "energy " + energy + " (rank <= " + maxRank + ")") + " on "
                            + backend.describe() + "; comparing " + plan.others().size() + " other tensors");
                }
                long bytes = 0;
                for (ExtractPlan.Target x : plan.targets()) {
                    bytes += x.base().info().sizeInBytes();
                }
                for (ExtractPlan.Other x : plan.others()) {
                    bytes += x.base().info().sizeInBytes();
                }
                Progress progress = new Progress(err, !quiet, bytes, plan.targets().size() + plan.others().size(), "extracting");
                RandomizedSvd.Options svd = new RandomizedSvd.Options(oversampling, powerIterations, seed, cpuThreads);
                report = ExtractRunner.run(plan, backend, output, new ExtractRunner.Options(svd, checkOptimal), progress);
            }
            print(report, err);
        }
        return ExitCodes.OK;
    }

    private ExtractOptions options() throws UsageException {
        if (rank != null && energy != null) {
            throw new UsageException("--rank and --energy both given: choose one rank for every module, or an energy share per module");
        }
        if (rank != null && rank < 1) {
            throw new UsageException("--rank " + rank + ": expected 1 or more");
        }
        if (energy != null && !(energy > 0 && energy <= 1)) {
            throw new UsageException("--energy " + energy + ": expected a share of ‖ΔW‖² in (0, 1], e.g. 0.95");
        }
        if (maxRank < 1) {
            throw new UsageException("--max-rank " + maxRank + ": expected 1 or more");
        }
        List<String> targets = null;
        if (!target.equalsIgnoreCase("all-linear")) {
            targets = new ArrayList<>();
            for (String s : target.split(",")) {
                if (!s.isBlank()) {
                    targets.add(s.trim());
                }
            }
            if (targets.isEmpty()) {
                throw new UsageException("--target " + target + ": expected all-linear or module names such as q_proj,v_proj");
            }
        }
        ExtractOptions.Others o;
        switch (others.toLowerCase(Locale.ROOT)) {
            case "save": o = ExtractOptions.Others.SAVE; break;
            case "report": o = ExtractOptions.Others.REPORT; break;
            default: throw new UsageException("--others " + others + ": expected save or report");
        }
        DType d = LoraMerge.parseDtype(dtype);
        return new ExtractOptions(targets, embeddings, rank != null ? rank : DEFAULT_RANK, energy, maxRank, o, d,
                baseModelName != null ? baseModelName : base.toString());
    }

    private void print(ExtractReport report, PrintStream err) throws IOException {
        if (json) {
            ObjectMapper m = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);
            m.setVisibility(PropertyAccessor.FIELD, JsonAutoDetect.Visibility.PUBLIC_ONLY);
            System.out.println(m.writeValueAsString(report));
        }
        if (quiet) {
            return;
        }
        err.println(String.format(Locale.ROOT, "loramerge: wrote %s: %d modules extracted (%d unchanged, left out), %d other tensors changed, "
                        + "%s, %.1f s (SVDs on %s); kept %.2f%% of ‖ΔW‖², relative error %.3g",
                report.output, report.modulesExtracted, report.unchangedModules.size(), report.changes.size(),
                Progress.bytes(report.adapterBytes), report.seconds, report.svdDevice, 100 * report.energyKept, report.relativeError));
        if (!report.modules.isEmpty()) {
            err.println("modules, largest error first (error = ‖ΔW − B·A‖/‖ΔW‖ as written; svd = before rounding the factors; "
                    + "optimum = the best rank-r error, --check-optimal):");
            err.println(String.format(Locale.ROOT, "  %5s  %8s  %10s  %10s  %10s  %7s  %s", "rank", "energy", "error", "svd", "optimum", "ratio", "module"));
            List<ExtractReport.Module> rows = new ArrayList<>(report.modules);
            rows.sort(Comparator.comparingDouble(ExtractReport.Module::relativeError).reversed());
            for (ExtractReport.Module m : rows.subList(0, Math.min(TABLE_ROWS, rows.size()))) {
                err.println(String.format(Locale.ROOT, "  %5d  %7.2f%%  %10.3g  %10.3g  %10s  %7s  %s", m.rank(), 100 * m.energyKept(), m.relativeError(),
                        m.truncationError(), m.optimalError() == null ? "-" : String.format(Locale.ROOT, "%.3g", m.optimalError()),
                        m.optimalRatio() == null ? "-" : String.format(Locale.ROOT, "%.4f", m.optimalRatio()), m.name()));
            }
            if (rows.size() > TABLE_ROWS) {
                err.println("  ... " + (rows.size() - TABLE_ROWS) + " more (--json lists every module)");
            }
        }
        for (ExtractReport.Change c : report.changes) {
            String shape = Arrays.equals(c.baseShape(), c.tunedShape()) ? "" : " " + Arrays.toString(c.baseShape()) + " -> " + Arrays.toString(c.tunedShape());
            err.println("changed: " + c.tensor() + shape + " (" + c.reason() + (c.relativeChange() == null ? "" : String.format(Locale.ROOT,
                    ", relative change %.3g", c.relativeChange())) + "): " + c.action());
        }
        report.notes.forEach(n -> err.println("note: " + n));
        report.warnings.forEach(w -> err.println("warning: " + w));
    }
}
