package org.loramerge.format;

import com.code_intelligence.jazzer.junit.FuzzTest;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.loramerge.quant.WeightFormats;
import org.loramerge.testutil.FuzzFiles;
import org.loramerge.testutil.FuzzOracle;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Coverage-guided fuzzing of a sharded model folder: config.json, model.safetensors.index.json and
 * shards, all from the input, are either a checkpoint whose every tensor the index places in the shard
 * that holds it, or a typed refusal naming the folder's file. The quantization detection reads the
 * same folder.
 *
 * <p>Input: parts joined by NUL ({@link FuzzFiles#parts}): config.json and the index (each absent when
 * empty), then each shard as its file name, a newline and its safetensors header (the data section is sized
 * to the header).
 */
class CheckpointFuzzTest {
    private static final Path ROOT = FuzzFiles.scratch("checkpoint");

    @Tag("fuzz")
    @Timeout(10)
    @FuzzTest(maxDuration = "45s")
    void anyShardedFolderOpensConsistentlyOrIsRefusedNamingItsFile(byte[] data) throws IOException {
        Path dir = FuzzFiles.emptyDir(ROOT.resolve("model"));
        List<byte[]> parts = FuzzFiles.parts(data, 0, 8);
        if (parts.get(0).length > 0) {
            Files.write(dir.resolve("config.json"), parts.get(0));
        }
        if (parts.size() > 1 && parts.get(1).length > 0) {
            Files.write(dir.resolve(ShardIndex.FILE_NAME), parts.get(1));
        }
        for (byte[] shard : parts.subList(Math.min(2, parts.size()), parts.size())) {
            String text = new String(shard, StandardCharsets.ISO_8859_1);
            int newline = text.indexOf('\n');
            String name = newline < 0 ? text : text.substring(0, newline);
            if (!isWritableName(name)) {
                continue;
            }
            byte[] header = newline < 0 ? new byte[0] : text.substring(newline + 1).getBytes(StandardCharsets.ISO_8859_1);
            FuzzFiles.writeHeaderOnly(dir.resolve(name), header, new byte[0]);
        }
        FuzzOracle.acceptsOrRefuses(() -> {
            try (Checkpoint c = Checkpoint.open(dir)) {
                long total = 0;
                for (TensorInfo t : c.tensors().values()) {
                    SafetensorsFile f = c.fileOf(t.name());
                    assertSame(t, f.tensor(t.name()), t + " is not in the shard that holds it");
                    total += t.sizeInBytes();
                }
                assertEquals(total, c.totalTensorBytes());
                for (Path p : c.nonWeightFiles()) {
                    assertTrue(Files.isRegularFile(p) && p.getParent().equals(dir), p + " would be carried");
                }
                c.adapterFiles();
                c.usesConv1D();
                WeightFormats.detect(c);
            }
        }, dir);
    }

    /** Names the harness can write as files of the folder (the checks of names the index gives are the code's own). */
    private static boolean isWritableName(String name) {
        return !name.isEmpty() && name.length() <= 100 && !name.equals(".") && !name.equals("..") && name.indexOf('/') < 0
                && name.indexOf('\0') < 0 && !name.equals("config.json") && !name.equals(ShardIndex.FILE_NAME)
                && name.chars().allMatch(ch -> ch >= 0x20 && ch < 0x7f);
    }
}
