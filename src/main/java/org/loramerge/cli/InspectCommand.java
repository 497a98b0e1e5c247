package org.loramerge.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collection;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.Callable;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.Progress;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

@Command(name = "inspect", mixinStandardHelpOptions = true,
        description = {"Lists the tensors (dtype, shape) of a model folder, an adapter folder or one .safetensors file; "
                + "for an adapter, also the resolved rank, alpha and scale of every module; for a quantized model, the format and "
                + "settings of every quantized weight."})
final class InspectCommand implements Callable<Integer> {
    @Parameters(index = "0", paramLabel = "PATH", description = "a model folder, an adapter folder or a .safetensors file")
    Path path;

    @Option(names = "--json", description = "print as JSON on stdout")
    boolean json;

    @Mixin
    InputOptions inputs = new InputOptions();

    private final ObjectMapper om = new ObjectMapper().enable(SerializationFeature.INDENT_OUTPUT);

    @Override
    public Integer call() throws Exception {
        PrintStream out = System.out;
        ObjectNode root = om.createObjectNode();
        if (Files.isDirectory(path) && Files.exists(path.resolve(LoraAdapter.CONFIG))) {
            try (LoraAdapter a = MergeCommand.openAdapter(path, inputs.followSymlinks)) {
                inspectAdapter(a, root, out);
            }
        } else if (Files.isDirectory(path)) {
            try (Checkpoint c = MergeCommand.openModel("inspect", path, inputs.followSymlinks)) {
                root.put("kind", "model");
                root.put("sharded", c.isSharded());
                tensors(c.tensors().values(), root, out, "model " + path + (c.isSharded() ? " (" + c.files().size() + " shards)" : ""));
                for (String w : c.warnings()) {
                    if (!json) {
                        out.println("warning: " + w);
                    }
                }
                quantization(c, root, out);
            }
        } else {
            try (SafetensorsFile f = SafetensorsFile.open(path)) {
                root.put("kind", "safetensors");
                root.set("metadata", om.valueToTree(f.metadata()));
                tensors(f.tensors(), root, out, "file " + path + ", metadata " + f.metadata());
            }
        }
        if (json) {
            out.println(om.writeValueAsString(root));
        }
        return ExitCodes.OK;
    }

    /**
     * The checkpoint's quantized weights, one line each (format, settings, dtype they dequantize to,
     * shape). A format loramerge cannot read is reported with its reason, as a merge would (exit 3),
     * after the tensors are listed.
     */
    private void quantization(Checkpoint c, ObjectNode root, PrintStream out) throws IOException, QuantException {
        QuantizedModel q;
        try {
            q = WeightFormats.detect(c);
        } catch (QuantException e) {
            if (json) {
                out.println(om.writeValueAsString(root));
            }
            throw e;
        }
        if (!q.usesFormat()) {
            return;
        }
        ObjectNode n = root.putObject("quantization");
        n.put("format", q.format().name());
        ArrayNode weights = n.putArray("weights");
        if (!json) {
            out.println("quantized: " + q.format().name() + ", " + q.weights().size() + " weights");
        }
        for (QuantizedWeight w : q.weights().values()) {
            ObjectNode x = weights.addObject();
            x.put("name", w.weightName());
            x.put("dtype", w.dtype().name());
            x.set("shape", om.valueToTree(w.shape()));
            x.put("description", w.describe());
            x.set("tensors", om.valueToTree(w.tensorNames()));
            if (!json) {
                out.println(String.format(Locale.ROOT, "  %-60s %-14s %s", w.weightName(), TensorInfo.shapeString(w.shape()), w.describe()));
            }
        }
        n.set("warnings", om.valueToTree(q.warnings()));
        if (!json) {
            for (String w : q.warnings()) {
                out.println("warning: " + w);
            }
        }
    }

    private void tensors(Collection<TensorInfo> tensors, ObjectNode root, PrintStream out, String title) {
        ArrayNode arr = root.putArray("tensors");
        long bytes = 0;
        for (TensorInfo t : tensors) {
            ObjectNode n = arr.addObject();
            n.put("name", t.name());
            n.put("dtype", t.dtype().name());
            n.set("shape", om.valueToTree(t.shape()));
            n.put("bytes", t.sizeInBytes());
            bytes += t.sizeInBytes();
        }
        root.put("total_bytes", bytes);
        if (!json) {
            out.println(title + ": " + tensors.size() + " tensors, " + Progress.bytes(bytes));
            for (TensorInfo t : tensors) {
                out.println(String.format(Locale.ROOT, "  %-60s %-5s %s", t.name(), t.dtype(), TensorInfo.shapeString(t.shape())));
            }
        }
    }

    private void inspectAdapter(LoraAdapter a, ObjectNode root, PrintStream out) {
        AdapterConfig c = a.config();
        root.put("kind", "adapter");
        root.put("r", c.r());
        root.put("lora_alpha", c.alpha());
        root.put("use_rslora", c.useRslora());
        root.put("use_dora", c.useDora());
        Map<String, String> kinds = new TreeMap<>();
        for (AdapterKey k : a.keys().values()) {
            kinds.merge(k.module(), k.kind().name().toLowerCase(Locale.ROOT), (x, y) -> x + "," + y);
        }
        ArrayNode modules = root.putArray("modules");
        if (!json) {
            out.println("adapter " + a.dir() + ": r=" + c.r() + " lora_alpha=" + c.alpha() + (c.useRslora() ? " rsLoRA" : "")
                    + (c.useDora() ? " DoRA" : "") + ", " + a.keys().size() + " keys");
            out.println(String.format(Locale.ROOT, "  %-56s %5s %8s %10s  %s", "module", "rank", "alpha", "scale", "parts"));
        }
        for (Map.Entry<String, String> e : kinds.entrySet()) {
            String m = e.getKey();
            boolean lora = e.getValue().contains("lora_") || e.getValue().contains("embedding_");
            ObjectNode n = modules.addObject();
            n.put("module", m);
            n.put("parts", e.getValue());
            if (lora) {
                n.put("rank", c.rankFor(m));
                n.put("alpha", c.alphaFor(m));
                n.put("scale", c.scaleFor(m));
            }
            if (!json) {
                out.println(lora
                        ? String.format(Locale.ROOT, "  %-56s %5d %8.4g %10.6g  %s", m, c.rankFor(m), c.alphaFor(m), c.scaleFor(m), e.getValue())
                        : String.format(Locale.ROOT, "  %-56s %5s %8s %10s  %s", m, "-", "-", "-", e.getValue()));
            }
        }
        if (!json) {
            for (String w : c.warnings()) {
                out.println("warning: " + w);
            }
        }
        tensors(a.file().tensors(), root, json ? out : new PrintStream(OutputStream.nullOutputStream()), "");
    }
}
