package org.loramerge.api;

import java.io.PrintStream;

/**
 * How {@link LoraMerge#quantize} writes a bitsandbytes 4-bit model.
 *
 * @param quantType   the 4-bit code book (bnb_4bit_quant_type): {@code nf4} (QLoRA's) or {@code fp4}, in any case
 * @param blocksize   elements per absmax block: a power of two from 32 to 4096 (bitsandbytes' default 64)
 * @param doubleQuant double-quantize the absmax values (QLoRA's default)
 * @param overwrite   replace an existing output folder (only once the new model is complete)
 * @param log         where a line per file written is printed, or null for none
 * @param followSymlinks read the base folder's files wherever their symbolic links lead
 */
public record QuantizeOptions(String quantType, int blocksize, boolean doubleQuant, boolean overwrite, PrintStream log, boolean followSymlinks) {
    /** NF4, blocksize 64, no double quantization, no overwrite, silent. */
    public static QuantizeOptions defaults() {
        return new QuantizeOptions("nf4", 64, false, false, null, false);
    }

    public QuantizeOptions withQuantType(String newQuantType) {
        return new QuantizeOptions(newQuantType, blocksize, doubleQuant, overwrite, log, followSymlinks);
    }

    public QuantizeOptions withBlocksize(int newBlocksize) {
        return new QuantizeOptions(quantType, newBlocksize, doubleQuant, overwrite, log, followSymlinks);
    }

    public QuantizeOptions withDoubleQuant(boolean newDoubleQuant) {
        return new QuantizeOptions(quantType, blocksize, newDoubleQuant, overwrite, log, followSymlinks);
    }

    public QuantizeOptions withOverwrite(boolean newOverwrite) {
        return new QuantizeOptions(quantType, blocksize, doubleQuant, newOverwrite, log, followSymlinks);
    }

    public QuantizeOptions withLog(PrintStream newLog) {
        return new QuantizeOptions(quantType, blocksize, doubleQuant, overwrite, newLog, followSymlinks);
    }

    public QuantizeOptions withFollowSymlinks(boolean follow) {
        return new QuantizeOptions(quantType, blocksize, doubleQuant, overwrite, log, follow);
    }
}
