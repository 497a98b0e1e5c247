package org.loramerge.quant;

import java.util.List;
import org.loramerge.format.SafetensorsWriter;

/**
 * A weight written in a quantized format (e.g. {@code merge --to nf4}): the tensors of its group,
 * laid out before any value is known, and the {@link Requantizer} that produces them.
 */
public interface QuantizedOutput {
    /** The format written, for reports: "NF4", "FP8". */
    String kind();

    /** The group's tensors as the output header lists them, the codes ({@code weightName}) first. */
    List<SafetensorsWriter.Entry> entries(String weightName);

    /** Elements per quantization block: a range of a requantized weight starts on a multiple of it. */
    int blockElements();

    /** Whether the output's scales are themselves quantized (double quantization), for reports; only 4-bit outputs can be. */
    default boolean isDoubleQuant() {
        return false;
    }

    /** Settings the output takes from the base that the user should know about (e.g. a nested blocksize it cannot keep); none by default. */
    default List<String> warnings() {
        return List.of();
    }

    /** A requantizer of {@code base}'s merged values into this output, on the CPU. */
    Requantizer requantizer(QuantizedWeight base);
}
