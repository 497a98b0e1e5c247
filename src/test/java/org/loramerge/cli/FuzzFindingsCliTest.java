package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.cli.CliRun.assertBadInput;
import static org.loramerge.cli.CliRun.merge;
import static org.loramerge.testutil.TinyModels.bf16Tensor;
import static org.loramerge.testutil.TinyModels.f32Tensor;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.loraPair;
import static org.loramerge.testutil.TinyModels.tinyLlama;
import static org.loramerge.testutil.TinyModels.writeAdapter;
import static org.loramerge.testutil.TinyModels.writeModel;

import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * What a user sees for the inputs that fuzzing found mishandled (issue 10; scripts/fuzz/README.md).
 * The raw inputs themselves are replayed by the fuzz targets from their inputs folders.
 */
class FuzzFindingsCliTest {
    @TempDir
    Path dir;

    @Test
    void loraOnAWeightWithNoRowsMergesInsteadOfDividingByZero() throws Exception {
        List<Tensor> tensors = new ArrayList<>(tinyLlama());
        tensors.add(bf16Tensor("model.empty_proj.weight", 0, 8));
        Path base = writeModel(dir.resolve("base"), tensors);
        Path adapter = writeAdapter(dir.resolve("adapter"), loraConfig(4, 8, "[\"q_proj\", \"empty_proj\"]", ""),
                concat(loraPair("model.layers.0.self_attn.q_proj", 4, 8, 8), loraPair("model.empty_proj", 4, 8, 0)));
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(base, adapter, out);
        assertEquals(0, r.code(), r::err);
        try (SafetensorsFile merged = SafetensorsFile.open(out.resolve("model.safetensors"))) {
            TensorInfo empty = merged.tensor("model.empty_proj.weight");
            assertArrayEquals(new long[] {0, 8}, empty.shape());
            assertEquals(0, empty.sizeInBytes());
        }
    }

    @Test
    void tokenRowsForAFourBitWeightAreRefusedNamingTheKeyInsteadOfAnInternalError() {
        Path base = Paths.get("src/test/resources/qlora/plain_bs32/base");
        String key = "base_model.model.model.layers.0.self_attn.q_proj.token_adapter.trainable_tokens_delta";
        Path adapter = writeAdapter(dir.resolve("adapter"), loraConfig(4, 8, "[\"q_proj\"]", "\"trainable_token_indices\": [0]"),
                List.of(f32Tensor(key, 1, 64)));
        Path out = dir.resolve("merged");
        CliRun.Result r = merge(base, adapter, out, "--to", "bf16");
        assertBadInput(r, out, adapter);
        assertTrue(r.err().contains(key) && r.err().contains("4-bit"), r::err);
    }

    @SafeVarargs
    private static List<Tensor> concat(List<Tensor>... lists) {
        List<Tensor> out = new ArrayList<>();
        for (List<Tensor> l : lists) {
            out.addAll(l);
        }
        return out;
    }
}
