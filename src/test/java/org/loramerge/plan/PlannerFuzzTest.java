package org.loramerge.plan;

import com.code_intelligence.jazzer.junit.FuzzTest;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Timeout;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.testutil.FuzzFiles;
import org.loramerge.testutil.FuzzOracle;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Coverage-guided fuzzing of the planner: an adapter whose config and tensors come from the input,
 * planned against one of the committed fixtures' tiny bases (dense, GPT-2 Conv1D, tied embeddings,
 * Conv2d, a bitsandbytes NF4 base, a sharded one, Mixtral's and gpt-oss's MoE experts) or against a
 * base that the input makes too, is
 * either a plan that places every adapter key and writes every base tensor once, or a typed refusal
 * naming the adapter or base folder.
 *
 * <p>Input: a byte choosing the base, a byte choosing the options (dtype, --to, shard size), then
 * parts joined by NUL: adapter_config.json, the adapter's safetensors header, the bytes its data
 * section repeats (zeros when empty), and for the input's own base its config.json and header.
 */
class PlannerFuzzTest {
    /** The bases by the input's first byte (modulo their count); {@link #OWN_BASE} is the one the input makes. Append only: committed inputs keep their base. */
    static final List<Path> BASES = Arrays.asList(
            Paths.get("src/test/resources/fixtures/linear_bf16/base"),
            Paths.get("src/test/resources/fixtures/gpt2_conv1d/base"),
            Paths.get("src/test/resources/fixtures/tied_lm_head/base"),
            Paths.get("src/test/resources/fixtures/conv2d/base"),
            Paths.get("src/test/resources/qlora/plain_bs32/base"),
            Paths.get("src/test/resources/fixtures/sharded_bf16/base"),
            null,
            Paths.get("src/test/resources/moe/mixtral_experts/base"),
            Paths.get("src/test/resources/moe/gpt_oss_experts/base"));
    static final int OWN_BASE = 6;
    private static final DType[] DTYPES = {null, DType.F32, DType.F16, DType.BF16};
    private static final QuantTarget[] TARGETS = {null, QuantTarget.NF4, QuantTarget.BF16, QuantTarget.F32};
    private static final Path ROOT = FuzzFiles.scratch("planner");
    private static final Checkpoint[] OPEN = new Checkpoint[BASES.size()];

    @Tag("fuzz")
    @Timeout(10)
    @FuzzTest(maxDuration = "45s")
    void anyAdapterIsPlannedKeyByKeyOrRefusedNamingItsFolder(byte[] data) throws IOException {
        if (data.length < 2) {
            return;
        }
        int choice = Byte.toUnsignedInt(data[0]) % BASES.size();
        int flags = Byte.toUnsignedInt(data[1]);
        List<byte[]> parts = FuzzFiles.parts(data, 2, 5);
        Path adapterDir = FuzzFiles.emptyDir(ROOT.resolve("adapter"));
        Files.write(adapterDir.resolve(LoraAdapter.CONFIG), parts.get(0));
        FuzzFiles.writeHeaderOnly(adapterDir.resolve(LoraAdapter.WEIGHTS), part(parts, 1), part(parts, 2));
        Path baseDir;
        if (choice == OWN_BASE) {
            baseDir = FuzzFiles.emptyDir(ROOT.resolve("base"));
            if (part(parts, 3).length > 0) {
                Files.write(baseDir.resolve("config.json"), part(parts, 3));
            }
            FuzzFiles.writeHeaderOnly(baseDir.resolve("model.safetensors"), part(parts, 4), part(parts, 2));
        } else {
            baseDir = BASES.get(choice);
        }
        PlanOptions options = new PlanOptions(DTYPES[flags & 3], (flags & 16) != 0 ? 4096 : PlanOptions.DEFAULT_MAX_SHARD_SIZE,
                TARGETS[(flags >> 2) & 3]);
        FuzzOracle.acceptsOrRefuses(() -> {
            Checkpoint base = choice == OWN_BASE ? Checkpoint.open(baseDir) : base(choice);
            try (LoraAdapter adapter = LoraAdapter.open(adapterDir)) {
                MergePlan plan = Planner.plan(base, adapter, options);
                checkPlan(plan, adapter);
            } finally {
                if (choice == OWN_BASE) {
                    base.close();
                }
            }
        }, adapterDir, baseDir);
    }

    private static void checkPlan(MergePlan plan, LoraAdapter adapter) {
        Set<String> names = new HashSet<>();
        long total = 0;
        for (MergePlan.Shard s : plan.shards()) {
            for (OutputTensor t : s.tensors()) {
                assertTrue(names.add(t.name()), t.name() + " is written twice");
                assertTrue(t.sizeInBytes() >= 0, t.name() + " has a negative size");
                total += t.sizeInBytes();
                t.route();
            }
        }
        assertEquals(plan.tensors().size(), names.size(), "the shards do not hold the plan's tensors");
        assertEquals(plan.totalBytes(), total);
        assertEquals(adapter.keys().keySet(), plan.keyUse().keySet(), "an adapter key was not placed");
        assertFalse(plan.shards().isEmpty());
        plan.changesNothing();
    }

    private static byte[] part(List<byte[]> parts, int i) {
        return i < parts.size() ? parts.get(i) : new byte[0];
    }

    private static synchronized Checkpoint base(int i) throws Exception {
        if (OPEN[i] == null) {
            OPEN[i] = Checkpoint.open(BASES.get(i));
        }
        return OPEN[i];
    }
}
