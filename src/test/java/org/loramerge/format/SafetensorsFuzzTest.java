package org.loramerge.format;

import com.code_intelligence.jazzer.junit.FuzzTest;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.loramerge.testutil.FuzzFiles;
import org.loramerge.testutil.FuzzOracle;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Coverage-guided fuzzing of the safetensors reader: any bytes are either a file whose every
 * tensor lies inside it and can be read, or a {@link SafetensorsException} naming the file.
 * {@code mvn test} runs the committed inputs (SafetensorsFuzzTestInputs/); {@code .ci/run} and
 * scripts/fuzz/campaign.sh fuzz it (JAZZER_FUZZ=1).
 */
class SafetensorsFuzzTest {
    private static final Path DIR = FuzzFiles.scratch("safetensors");

    @Tag("fuzz")
    @Timeout(10)
    @FuzzTest(maxDuration = "45s")
    void anyBytesAreReadAsTensorsInsideTheFileOrRefusedNamingIt(byte[] data) throws IOException {
        Path file = DIR.resolve("model.safetensors");
        Files.write(file, data);
        FuzzOracle.acceptsOrRefuses(() -> {
            try (SafetensorsFile f = SafetensorsFile.open(file)) {
                long dataStart = 8 + f.headerSize();
                long end = dataStart;
                for (TensorInfo t : f.tensors()) {
                    assertTrue(t.dataStart() >= dataStart && t.dataStart() + t.sizeInBytes() <= data.length, t + " lies outside the file");
                    assertEquals(t.numElements() * t.dtype().bits(), t.sizeInBytes() * 8, t + ": size and shape disagree");
                    assertEquals(t, f.tensor(t.name()));
                    end = Math.max(end, t.dataStart() + t.sizeInBytes());
                    try (MappedRegion r = f.map(t, 0, Math.min(t.sizeInBytes(), 4096))) {
                        assertEquals(Math.min(t.sizeInBytes(), 4096), r.bytes().remaining());
                    }
                    if (t.sizeInBytes() <= 4096) {
                        assertEquals(t.sizeInBytes(), f.readAll(t).remaining());
                    }
                }
                assertEquals(data.length, end, "bytes after the last tensor were accepted");
            }
        }, DIR);
    }
}
