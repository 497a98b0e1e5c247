package org.loramerge.plan;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Everything the merge will write, decided from headers and configs before any byte is written.
 *
 * @param tensors     output tensors in write order
 * @param shards      output files and the tensors each holds
 * @param config      the config.json to write, or null when the base has none
 * @param filesToCopy non-weight files copied as they are: the base's, with tokenizer files of the adapter folder in
 *                    their place ({@link CarriedFiles}); never the base's README.md (the merge writes a model card)
 * @param keyUse      every adapter key and the output tensor it went into
 * @param warnings    things the user should know that do not stop the merge
 * @param notes       decisions worth reporting (untied lm_head, resized vocabulary, tokenizer files taken, ...)
 * @param provenance  the inputs, for the model card; null for a plan that writes none (unmerge)
 */
public record MergePlan(List<OutputTensor> tensors, List<Shard> shards, ObjectNode config, List<Path> filesToCopy,
                        Map<String, String> keyUse, List<String> warnings, List<String> notes, Provenance provenance) {

    /** One output file. */
    public record Shard(String fileName, List<OutputTensor> tensors) {
        public long sizeInBytes() {
            long n = 0;
            for (OutputTensor t : tensors) {
                n += t.sizeInBytes();
            }
            return n;
        }
    }

    public long totalBytes() {
        long n = 0;
        for (OutputTensor t : tensors) {
            n += t.sizeInBytes();
        }
        return n;
    }

    public long count(OutputTensor.Kind kind) {
        return tensors.stream().filter(t -> t.kind() == kind).count();
    }

    /** Whether the adapter changes no tensor: nothing is merged into or replaced, so the output would be the base (converted at most). */
    public boolean changesNothing() {
        return count(OutputTensor.Kind.MERGE) == 0 && count(OutputTensor.Kind.REPLACE) == 0;
    }

    public boolean isSharded() {
        return shards.size() > 1;
    }
}
