package org.loramerge.pipeline;

import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.WriteMode;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;

import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The batch command's shared pass over one base, with an engine that reads dense rows by positional
 * reads into its own blocks (as the GPU engine does): a tensor that only some of the merges change
 * is written by each merge's own strategy, which reads its rows into the pass's input blocks, so the
 * pass needs them as a merge of its own does.
 */
class SharedPassReadsTest {
    private static final Path COMBINE = Path.of("src/test/resources/combine");
    private static final Path BASE = COMBINE.resolve("models/llama_f32");

    @TempDir
    Path dir;

    private static MergeRunner.Options options() {
        return new MergeRunner.Options(false, 4096, 0, 2, WriteMode.POSITIONAL, null, 4);
    }

    @Test
    void aTensorOnlyOneMergeOfASharedPassChangesIsReadIntoTheEnginesBlocksAndWritesItsOwnBytes() throws Exception {
        List<String> adapters = List.of("qv_r4", "kv_r8"); // k_proj changed by the second only, v_proj by both
        try (Checkpoint base = Checkpoint.open(BASE); LoraAdapter qv = LoraAdapter.open(COMBINE.resolve("adapters/qv_r4"));
             LoraAdapter kv = LoraAdapter.open(COMBINE.resolve("adapters/kv_r8"));
             WatchedEngine engine = new WatchedEngine(3, true)) {
            PlanOptions planOptions = new PlanOptions(null, 5_000);
            List<MergePlan> plans = List.of(Planner.plan(base, qv, planOptions), Planner.plan(base, kv, planOptions));
            List<AtomicOutput> outs = new ArrayList<>();
            try {
                for (String a : adapters) {
                    outs.add(AtomicOutput.create(dir.resolve("shared").resolve(a), false, List.of(BASE)));
                }
                // were the pass without input blocks while it reads into them, the merge would wait for one for good
                List<MergeRunner.SharedOutcome> done = assertTimeoutPreemptively(Duration.ofSeconds(60),
                        () -> MergeRunner.runShared(plans, engine, outs, List.of(options(), options())));
                for (MergeRunner.SharedOutcome o : done) {
                    assertNull(o.error());
                }
            } finally {
                outs.forEach(AtomicOutput::close);
            }
            assertTrue(engine.readIntoBlocks.stream().anyMatch(n -> n.contains("k_proj")),
                    "the second merge's k_proj rows came in the engine's blocks: " + engine.readIntoBlocks);
            for (int k = 0; k < plans.size(); k++) {
                Path alone = dir.resolve("alone").resolve(adapters.get(k));
                try (CpuBackend cpu = new CpuBackend(3); AtomicOutput o = AtomicOutput.create(alone, false, List.of(BASE))) {
                    MergeRunner.run(plans.get(k), cpu, o, options(), Progress.silent());
                }
                assertSameFiles(alone, dir.resolve("shared").resolve(adapters.get(k)));
            }
        }
    }

    private static void assertSameFiles(Path expected, Path actual) throws Exception {
        List<Path> files = SameFiles.assertSameFiles(expected, actual);
        assertTrue(files.size() > 2, "a sharded output: " + files);
    }
}
