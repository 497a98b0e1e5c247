package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.Adapters;
import org.loramerge.api.LoraMerge;
import org.loramerge.engine.Backend;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.UsageException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.CombineReport;
import org.loramerge.pipeline.CombinedAdapterWriter;
import org.loramerge.plan.AdapterPlan;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.Planner;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "combine", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Combines several PEFT LoRA adapters of one base into a new PEFT adapter, as PEFT 0.21's add_weighted_adapter does "
                + "(cat, linear, ties, dare_linear, dare_ties, magnitude_prune and the svd methods; docs/FORMATS.md §8), "
                + "computed in float64 and rounded once.",
                "The base is read for shapes and to check that every adapter belongs to it. The output appears only when complete."})
final class CombineCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "the base model the adapters were trained on")
    Path base;

    @Option(names = "--adapter", required = true, paramLabel = "ADAPTER_DIR", description = "a PEFT adapter folder; repeat it for each adapter")
    List<Path> adapters;

    @Option(names = "--combine", required = true, paramLabel = "METHOD",
            description = "PEFT's combination_type: cat, linear, ties, dare_linear, dare_ties, magnitude_prune, svd, ties_svd, "
                    + "dare_linear_svd, dare_ties_svd, magnitude_prune_svd")
    String combine;

    @Mixin
    CombineOptions combineOptions;

    @Option(names = "--out", required = true, paramLabel = "ADAPTER_DIR", description = "folder to create for the new adapter")
    Path out;

    @Option(names = "--dtype", paramLabel = "f32|f16|bf16",
            description = "dtype of the new factors (default: that of the first adapter's; PEFT writes the base's dtype on a 16-bit base)")
    String dtype;

    @Option(names = "--threads", paramLabel = "N", description = "modules combined at once (default: all cores); the output is the same")
    Integer threads;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda[:N]",
            description = "where the _svd methods form and decompose each module's dense delta: auto (a usable GPU, else the CPU), cpu, "
                    + "or cuda[:N] (default: auto). The GPU's SVD is the CPU's algorithm with other rounding (docs/FORMATS.md §8.3)")
    String device;

    @Option(names = "--overwrite", description = "replace the --out folder if it exists (only once the new adapter is complete)")
    boolean overwrite;

    @Option(names = "--json", description = "print a JSON summary on stdout")
    boolean json;

    @Option(names = "--quiet", description = "no summary on stderr")
    boolean quiet;

    @Mixin
    InputOptions inputOptions = new InputOptions();

    @Override
    public Integer call() throws Exception {
        DType factorType = dtype == null ? null : LoraMerge.parseDtype(dtype);
        if (dtype != null && factorType == null) {
            throw new UsageException("--dtype auto does not apply to combine: give f32, f16 or bf16, or leave it out");
        }
        if (threads != null && threads < 1) {
            throw new UsageException("--threads " + threads + ": expected 1 or more (default: all cores)");
        }
        Combination combination = combineOptions.combination(combine, CombineMethod.forCombine(), adapters.size(), null, "combine");
        PrintStream err = System.err;
        try (Checkpoint ckpt = LoraMerge.openModel("--base", base, inputOptions.followSymlinks); Adapters loras = Adapters.open(adapters, inputOptions.followSymlinks)) {
            AdapterPlan plan = Planner.planAdapter(ckpt, loras.list(), combination);
            if (factorType == null) {
                DType first = plan.modules().get(0).update().parts().get(0).term().a().dtype();
                factorType = first.isMergeable() ? first : DType.F32; // F64 factors: written as F32, as PEFT keeps LoRA weights
            }
            if (!quiet) {
                for (String w : plan.warnings()) {
                    err.println("warning: " + w);
                }
            }
            List<Path> inputs = new ArrayList<>();
            inputs.add(base);
            inputs.addAll(adapters);
            int cpuThreads = threads != null ? threads : Runtime.getRuntime().availableProcessors();
            CombineReport report;
            Backends.Choice choice = Backends.open(device, cpuThreads);
            try (Backend backend = choice.backend(); AtomicOutput output = AtomicOutput.create(out, overwrite, inputs)) {
                if (!quiet && choice.fallbackReason() != null && combination.method().operand() == CombineMethod.Operand.SVD) {
                    err.println("loramerge: no usable GPU (" + choice.fallbackReason() + "); combining on the CPU");
                }
                report = CombinedAdapterWriter.write(plan, factorType, output, cpuThreads, backend);
            }
            print(report, err);
        }
        return ExitCodes.OK;
    }

    private void print(CombineReport report, PrintStream err) throws Exception {
        if (json) {
            CliJson.print(System.out, report, false);
        }
        if (!quiet) {
            boolean svd = CombineMethod.parse(combine, CombineMethod.forCombine()).operand() == CombineMethod.Operand.SVD;
            err.println(String.format(Locale.ROOT, "loramerge: wrote %s: %s of %d adapters, %d modules, rank %d, %s%s, %.1f s",
                    report.output, report.method, adapters.size(), report.modules.size(), report.rank, report.dtype,
                    svd ? ", SVDs on " + report.engine : "", report.seconds));
            for (String n : report.notes) {
                err.println("note: " + n);
            }
        }
    }
}
