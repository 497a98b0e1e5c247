package org.loramerge.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.select.Backends;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * {@code loramerge batch --devices all} on the GPU machine: every line merged on a GPU (two workers
 * on one GPU where there is only one; one worker per GPU and every GPU used where there are more),
 * shared pass and separate merges, with the CPU engine's bytes.
 */
@Tag("gpu")
class BatchGpuTest {
    @TempDir
    Path dir;

    @Test
    void aBatchOverEveryGpuWritesTheCpuEnginesBytesSharedOrSeparate() throws Exception {
        int gpus = Backends.cudaDeviceCount();
        assumeTrue(gpus > 0, "no CUDA device here");
        List<String> adapters = List.of("qv_r4", "qv_r4b", "qkvo_r4", "mlp_r4", "kv_r8", "dora_r4", "emb_r4", "rslora_r4");
        List<String> lines = new ArrayList<>();
        for (String a : adapters) {
            lines.add(BatchCliTest.line(BatchCliTest.LLAMA, BatchCliTest.adapter(a), "gpu/" + a, ""));
            lines.add(BatchCliTest.line(BatchCliTest.LLAMA, BatchCliTest.adapter(a), "gpu-bf16/" + a, "\"dtype\": \"bf16\""));
        }
        Path gpuManifest = dir.resolve("gpu.jsonl");
        Files.writeString(gpuManifest, String.join("\n", lines) + "\n");
        Path cpuManifest = dir.resolve("cpu.jsonl");
        Files.writeString(cpuManifest, String.join("\n", lines).replace("\"gpu", "\"cpu") + "\n");
        String parallel = Integer.toString(Math.max(2, gpus));

        for (String mode : List.of("--parallel", "--no-shared-read")) {
            CliRun.Result cpu = CliRun.run("batch", "--manifest", cpuManifest.toString(), "--devices", "cpu", "--quiet");
            assertEquals(0, cpu.code(), cpu.err());
            List<String> args = new ArrayList<>(List.of("batch", "--manifest", gpuManifest.toString(), "--devices", "all", "--json",
                    "--parallel", parallel));
            if (mode.equals("--no-shared-read")) {
                args.add(mode);
            }
            CliRun.Result gpu = CliRun.run(args.toArray(new String[0]));
            assertEquals(0, gpu.code(), gpu.err());
            JsonNode merges = new ObjectMapper().readTree(gpu.out()).get("merges");
            Set<String> devices = new TreeSet<>();
            for (JsonNode m : merges) {
                assertEquals("done", m.get("status").asText(), m.toString());
                assertTrue(m.get("engine").asText().startsWith("cuda:"), "merged on a GPU: " + m.get("engine"));
                devices.add(m.get("device").asText());
            }
            assertEquals(Math.min(gpus, Integer.parseInt(parallel)), devices.size(), "every GPU took lines: " + devices);
            for (String a : adapters) {
                BatchCliTest.assertSameFolder(dir.resolve("cpu").resolve(a), dir.resolve("gpu").resolve(a));
                BatchCliTest.assertSameFolder(dir.resolve("cpu-bf16").resolve(a), dir.resolve("gpu-bf16").resolve(a));
            }
            for (String d : List.of("cpu", "cpu-bf16", "gpu", "gpu-bf16", "cpu.jsonl.state", "gpu.jsonl.state")) {
                BatchCliTest.deleteTree(dir.resolve(d));
            }
        }
    }
}
