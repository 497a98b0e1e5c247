package org.loramerge.cli;

import java.nio.file.Path;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.engine.select.Backends;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * {@link BitsandbytesCheckpointsTest} on the GPU engine: the checkpoints transformers and bitsandbytes
 * saved merge on the device to the CPU engine's bytes, dense or back in their own format, and the
 * latter to bitsandbytes' quantization of the merged values.
 */
@Tag("gpu")
class BitsandbytesCheckpointsGpuTest {
    @TempDir
    Path dir;

    @BeforeEach
    void needsADevice() {
        assumeTrue(Backends.cudaDeviceCount() > 0, "no CUDA device here");
    }

    static java.util.stream.Stream<String> quantizedModels() throws java.io.IOException {
        return BitsandbytesCheckpointsTest.quantizedModels();
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedModels")
    void mergingOnTheGpuWritesTheCpuEnginesBytesDenseOrInTheModelsFormat(String model) throws Exception {
        for (String to : java.util.List.of("bf16", "f32", BitsandbytesCheckpointsTest.kind(model))) {
            Path cpu = dir.resolve(to + "-cpu");
            Path gpu = dir.resolve(to + "-gpu");
            for (Path out : java.util.List.of(cpu, gpu)) {
                CliRun.Result r = CliRun.run("merge", "--base", BitsandbytesCheckpointsTest.MODELS.resolve(model).toString(), "--adapter",
                        BitsandbytesCheckpointsTest.ADAPTER.toString(), "--out", out.toString(), "--to", to, "--device",
                        out == cpu ? "cpu" : "cuda", "--quiet");
                assertEquals(0, r.code(), r.err());
            }
            BatchCliTest.assertSameFolder(cpu, gpu);
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("quantizedModels")
    void mergingBackToTheModelsFormatOnTheGpuWritesBitsandbytesQuantizationOfTheMergedValues(String model) throws Exception {
        BitsandbytesCheckpointsTest.assertMergeWritesTheExpectedBytes(model, "cuda", dir.resolve("out"));
    }
}
