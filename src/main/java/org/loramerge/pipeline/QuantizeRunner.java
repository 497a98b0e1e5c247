package org.loramerge.pipeline;

import java.util.List;
import java.util.Locale;
import java.util.function.Consumer;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.TensorInfo;
import org.loramerge.quant.ModelQuantizer;
import org.loramerge.quant.Nf4Tensor;
import org.loramerge.quant.QuantState;

/**
 * {@code quantize}: writes the 4-bit model {@link ModelQuantizer#plan} lays out, file by file,
 * through the same {@link CheckpointWriter} as a merge: quantized weights encoded one at a time,
 * every other tensor copied file to file, then the index, config.json, the carried files and the
 * commit.
 */
public final class QuantizeRunner {
    private QuantizeRunner() {
    }

    /** Quantizes {@code base} into {@code out} and commits it; {@code log} gets a line per file written. */
    public static ModelQuantizer.Report run(Checkpoint base, AtomicOutput out, ModelQuantizer.Options options, Consumer<String> log)
            throws Exception {
        long start = System.nanoTime();
        ModelQuantizer.Plan plan = ModelQuantizer.plan(base, options);
        ModelQuantizer.Report report = new ModelQuantizer.Report();
        report.blocksize = options.blocksize();
        report.quantType = options.code().typeName();
        report.doubleQuant = options.doubleQuant();
        report.computeDtype = plan.computeDtype().torchName();
        report.skipped.addAll(plan.skipped());
        report.warnings.addAll(plan.warnings());
        try (CheckpointWriter writer = new CheckpointWriter(out, Progress.silent())) {
            int fileIndex = 0;
            for (ModelQuantizer.FilePlan f : plan.files()) {
                fileIndex++;
                try (CheckpointWriter.Shard shard = writer.openShard(f.fileName(), f.entries())) {
                    for (TensorInfo t : f.tensors()) {
                        QuantState state = f.states().get(t.name());
                        report.bytesRead += t.sizeInBytes();
                        if (state == null) {
                            shard.transferFrom(f.source().channel(), t.dataStart(), t.sizeInBytes());
                            report.tensorsCopied++;
                            continue;
                        }
                        ModelQuantizer.Encoded e = ModelQuantizer.encode(f.source(), t, state);
                        shard.write(e.codes());
                        List<SafetensorsWriter.Entry> group = Nf4Tensor.layout(t.name(), state);
                        shard.writeTail(group.subList(1, group.size()), e.tail());
                        report.tensors.add(e.report());
                        report.worstErrorOverAbsmax = Math.max(report.worstErrorOverAbsmax, e.report().maxErrorOverAbsmax());
                        report.tensorsQuantized++;
                    }
                    shard.finish();
                }
                log.accept(String.format(Locale.ROOT, "quantize: wrote %s (%d of %d files)", f.fileName(), fileIndex, plan.files().size()));
            }
            if (plan.sharded()) {
                writer.writeIndex();
            }
            if (plan.config() != null) {
                writer.writeConfig(plan.config());
            }
            writer.carry(base.nonWeightFiles());
            report.bytesWritten = writer.tensorBytes();
            writer.commit();
        }
        report.output = out.target().toString();
        report.seconds = (System.nanoTime() - start) / 1e9;
        report.warnings.addAll(base.warnings());
        return report;
    }
}
