package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.QuantizeOptions;
import org.loramerge.api.QuantizeResult;
import org.loramerge.pipeline.Progress;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

@Command(name = "quantize", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Writes a bitsandbytes 4-bit (NF4, or FP4) checkpoint of a 16-bit model, as transformers + bitsandbytes save one: "
                + "every 2-D Linear weight becomes the 4-bit tensor group (packed codes, absmax, quant_map, quant state), "
                + "embeddings, lm_head, norms and biases are copied, and config.json gets the bitsandbytes quantization_config. "
                + "Bit-identical to scripts/fixtures/nf4_reference.py; streamed weight by weight. The output appears only when complete."})
final class QuantizeCommand implements Callable<Integer> {
    @Option(names = "--base", required = true, paramLabel = "MODEL_DIR", description = "16-bit model folder (config.json + model.safetensors or shards)")
    Path base;

    @Option(names = "--out", required = true, paramLabel = "OUT_DIR",
            description = "folder to create for the 4-bit model (missing parent folders are created); checked before anything else")
    Path out;

    @Option(names = "--double-quant", description = "double-quantize the absmax values to 8 bits (bnb_4bit_use_double_quant, QLoRA's default)")
    boolean doubleQuant;

    @Option(names = "--quant-type", defaultValue = "nf4", paramLabel = "nf4|fp4",
            description = "the 4-bit code book (bnb_4bit_quant_type): nf4 (default, QLoRA's) or fp4")
    String quantType;

    @Option(names = "--blocksize", defaultValue = "64", paramLabel = "N",
            description = "elements per absmax block: a power of two from 32 to 4096 (default: 64, bitsandbytes' default)")
    int blocksize;

    @Option(names = "--overwrite", description = "replace OUT_DIR if it exists (only once the new model is complete)")
    boolean overwrite;

    @Option(names = "--json", description = "print the summary as JSON on stdout (snake_case keys; a failure prints {\"error\": ...})")
    boolean json;

    @Option(names = "--quiet", description = "no progress lines")
    boolean quiet;

    @Mixin
    InputOptions inputs = new InputOptions();

    @Override
    public Integer call() throws Exception {
        PrintStream err = System.err;
        QuantizeResult r = LoraMerge.quantize(base, out, QuantizeOptions.defaults().withQuantType(quantType).withBlocksize(blocksize).withDoubleQuant(doubleQuant)
                .withOverwrite(overwrite).withLog(quiet ? null : err).withFollowSymlinks(inputs.followSymlinks));
        if (json) {
            CliJson.print(System.out, r, false);
        }
        if (!quiet) {
            print(r, err);
        }
        return ExitCodes.OK;
    }

    private static void print(QuantizeResult r, PrintStream err) {
        err.println(String.format(Locale.ROOT,
                "loramerge: wrote %s: %d weights %s (blocksize %d%s, compute dtype %s), %d tensors copied, %s in %.1f s; "
                        + "worst |W - dequant| = %.4f x block absmax",
                r.output(), r.tensorsQuantized(), r.quantType().toUpperCase(Locale.ROOT), r.blocksize(),
                r.doubleQuant() ? ", double-quantized absmax" : "", r.computeDtype(),
                r.tensorsCopied(), Progress.bytes(r.bytesWritten()), r.seconds(), r.worstErrorOverAbsmax()));
        for (QuantizeResult.Skipped s : r.skipped()) {
            err.println("note: kept " + s.name() + " unquantized: " + s.reason());
        }
        for (String w : r.warnings()) {
            err.println("warning: " + w);
        }
    }
}
