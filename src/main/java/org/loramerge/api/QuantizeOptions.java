package org.loramerge.api;

import java.io.PrintStream;

/**
 * How {@link LoraMerge#quantize} writes a bitsandbytes NF4 model.
 *
 * @param blocksize   elements per absmax block: a power of two from 32 to 4096 (bitsandbytes' default 64)
 * @param doubleQuant double-quantize the absmax values (QLoRA's default)
 * @param overwrite   replace an existing output folder (only once the new model is complete)
 * @param log         where a line per file written is printed, or null for none
 * @param followSymlinks read the base folder's files wherever their symbolic links lead
 */
public record QuantizeOptions(int blocksize, boolean doubleQuant, boolean overwrite, PrintStream log, boolean followSymlinks) {
    /** Blocksize 64, no double quantization, no overwrite, silent. */
    public static QuantizeOptions defaults() {
        return new QuantizeOptions(64, false, false, null, false);
    }

    public QuantizeOptions withBlocksize(int newBlocksize) {
        return new QuantizeOptions(newBlocksize, doubleQuant, overwrite, log, followSymlinks);
    }

    public QuantizeOptions withDoubleQuant(boolean newDoubleQuant) {
        return new QuantizeOptions(blocksize, newDoubleQuant, overwrite, log, followSymlinks);
    }

    public QuantizeOptions withOverwrite(boolean newOverwrite) {
        return new QuantizeOptions(blocksize, doubleQuant, newOverwrite, log, followSymlinks);
    }

    public QuantizeOptions withLog(PrintStream newLog) {
        return new QuantizeOptions(blocksize, doubleQuant, overwrite, newLog, followSymlinks);
    }

    public QuantizeOptions withFollowSymlinks(boolean follow) {
        return new QuantizeOptions(blocksize, doubleQuant, overwrite, log, follow);
    }
}
