package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.Inspection;
import org.loramerge.api.LoraMerge;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.ExpertParameters;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

@Command(name = "inspect", mixinStandardHelpOptions = true,
        description = {"Lists the tensors (dtype, shape) of a model folder, an adapter folder or one .safetensors file; "
                + "for an adapter, also the resolved rank, alpha and scale of every module."})
final class InspectCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "PATH", description = "a model folder, an adapter folder or a .safetensors file")
    Path path;

    @Option(names = "--json", description = "print as JSON on stdout (snake_case keys; fields that do not apply are left out)")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Override
    public Integer call() throws Exception {
        Inspection r = LoraMerge.inspect(path, inputs.followSymlinks);
        PrintStream out = System.out;
        if (json) {
            CliJson.print(out, r, true);
            return ExitCodes.OK;
        }
        if (r.kind().equals("adapter")) {
            out.println("adapter " + r.path() + ": r=" + r.r() + " lora_alpha=" + r.loraAlpha() + (r.useRslora() ? " rsLoRA" : "")
                    + (r.useDora() ? " DoRA" : "") + ", " + r.tensors().size() + " keys");
            out.println(String.format(Locale.ROOT, "  %-56s %5s %8s %10s  %s", "module", "rank", "alpha", "scale", "parts"));
            for (Inspection.ModuleEntry m : r.modules()) {
                out.println(m.rank() != null
                        ? String.format(Locale.ROOT, "  %-56s %5d %8.4g %10.6g  %s", m.module(), m.rank(), m.alpha(), m.scale(), m.parts())
                        : String.format(Locale.ROOT, "  %-56s %5s %8s %10s  %s", m.module(), "-", "-", "-", m.parts()));
            }
        } else {
            String title = r.kind().equals("model")
                    ? "model " + r.path() + (r.sharded() ? " (" + r.shards() + " shards)" : "")
                    : "file " + r.path() + ", metadata " + r.metadata();
            out.println(title + ": " + r.tensors().size() + " tensors, " + Progress.bytes(r.totalBytes()));
            for (Inspection.TensorEntry t : r.tensors()) {
                out.println(String.format(Locale.ROOT, "  %-60s %-5s %s", t.name(), t.dtype(),
                        TensorInfo.shapeString(t.shape().stream().mapToLong(Long::longValue).toArray())));
            }
        }
        for (String w : r.warnings()) {
            out.println("warning: " + w);
        }
        return ExitCodes.OK;
    }
}
