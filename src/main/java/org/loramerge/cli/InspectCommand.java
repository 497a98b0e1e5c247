package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.Inspection;
import org.loramerge.api.LoraMerge;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.ExpertParameters;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

@Command(name = "inspect", mixinStandardHelpOptions = true,
        description = {"Lists the tensors (dtype, shape) of a model folder, an adapter folder or one .safetensors file; "
                + "for an adapter, also the resolved rank, alpha and scale of every module; for a quantized model, its format and "
                + "each quantized weight's settings (a format loramerge cannot read is reported with the reason, exit 3)."})
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
        Inspection.Quantization q = r.quantization();
        if (json) {
            if (q != null && q.refused() != null) {
                throw new RefusedFormatException(path, q.refused()); // one JSON document: the error
            }
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
        if (q != null && q.refused() == null) {
            out.println("quantized: " + q.format() + ", " + q.weights().size() + " weights");
            for (Inspection.QuantizedWeightEntry w : q.weights()) {
                out.println(String.format(Locale.ROOT, "  %-60s %-14s %s", w.name(),
                        TensorInfo.shapeString(w.shape().stream().mapToLong(Long::longValue).toArray()), w.description()));
            }
            for (String w : q.warnings()) {
                out.println("warning: " + w);
            }
        }
        for (String w : r.warnings()) {
            out.println("warning: " + w);
        }
        if (q != null && q.refused() != null) {
            out.flush();
            throw new RefusedFormatException(path, q.refused()); // after the tensors, so the user sees what the folder holds
        }
        return ExitCodes.OK;
    }

    /** A quantization loramerge cannot read, reported by inspect as a merge would report it (exit 3). */
    static final class RefusedFormatException extends UserException {
        private static final long serialVersionUID = 1L;
        private final transient Path file;

        RefusedFormatException(Path file, String message) {
            super(message);
            this.file = file;
        }

        @Override
        public ExitCode exitCode() {
            return ExitCode.BAD_INPUT;
        }

        @Override
        public Path file() {
            return file;
        }
    }
}
