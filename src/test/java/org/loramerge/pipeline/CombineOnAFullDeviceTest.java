package org.loramerge.pipeline;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import jcuda.CudaException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.api.Adapters;
import org.loramerge.engine.Backend;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.HostCombinedDelta;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.engine.WeightDelta;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.plan.AdapterPlan;
import org.loramerge.plan.Combination;
import org.loramerge.plan.CombineMethod;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TensorSource;

/**
 * combine on a GPU whose device has no room left for some modules' dense Δ (a device shared with
 * other work), without a device: an engine that reports its device out of memory when Δ is
 * opened, or later in its SVD, for some modules. Those modules are decomposed on the host, the run
 * succeeds, writes what the CPU engine writes for them, and the report names them in one note.
 */
class CombineOnAFullDeviceTest {
    private static final Path COMBINE = Path.of("src/test/resources/combine");

    @TempDir
    Path dir;

    /**
     * A GPU engine as combine sees it: Δ is the host's (so its factors are the CPU engine's bits),
     * labelled with the device, except that the device has no room for Δ of a q_proj module and
     * runs out of memory in the SVD of a v_proj module.
     */
    private static final class FullDevice implements Backend {
        @Override
        public String describe() {
            return "cuda:0 a device shared with other work";
        }

        @Override
        public int parallelism() {
            return 3;
        }

        @Override
        public WeightDelta openCombination(DenseCombination dense, int rows, int cols) {
            String module = dense.spec().module();
            if (module.endsWith("q_proj")) {
                throw new DeviceOutOfMemoryException("cuda:0", new CudaException("cudaErrorMemoryAllocation"));
            }
            HostCombinedDelta host = HostCombinedDelta.open(dense, rows, cols);
            boolean failsInSvd = module.endsWith("v_proj");
            return new WeightDelta() {
                @Override
                public double deltaSquared() {
                    return host.deltaSquared();
                }

                @Override
                public RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException {
                    if (failsInSvd) {
                        throw new DeviceOutOfMemoryException("cuda:0", new CudaException("CUBLAS_STATUS_ALLOC_FAILED"));
                    }
                    return host.svd(rank, options);
                }

                @Override
                public double residualSquared(Matrix u, Matrix vt) throws IOException {
                    return host.residualSquared(u, vt);
                }

                @Override
                public String device() {
                    return "cuda:0";
                }

                @Override
                public void close() {
                    host.close();
                }
            };
        }

        @Override
        public TensorMerge openMerge(TensorJob job) {
            throw new UnsupportedOperationException("combine merges nothing");
        }

        @Override
        public WeightDelta openDelta(String name, TensorSource base, TensorSource tuned, int rows, int cols) {
            throw new UnsupportedOperationException("combine extracts nothing");
        }

        @Override
        public Requantization openRequantization(TensorJob job) {
            throw new UnsupportedOperationException("combine requantizes nothing");
        }

        @Override
        public void close() {
        }
    }

    private CombineReport combine(Backend backend, Path out) throws Exception {
        List<Path> adapters = List.of(COMBINE.resolve("adapters/qv_r4"), COMBINE.resolve("adapters/qkvo_r4"), COMBINE.resolve("adapters/qv_r4b"));
        Combination how = Combination.of(CombineMethod.TIES_SVD, 3, List.of(0.5, 0.3, 0.2), 0.5, Combination.MajoritySign.TOTAL, 1.0, 0, 4, null);
        Path base = COMBINE.resolve("models/llama_f32");
        try (Checkpoint ckpt = Checkpoint.open(base); Adapters loras = Adapters.open(adapters, false); Backend b = backend;
             AtomicOutput output = AtomicOutput.create(out, false, List.of(base))) {
            AdapterPlan plan = Planner.planAdapter(ckpt, loras.list(), how);
            return CombinedAdapterWriter.write(plan, DType.F32, output, 3, b);
        }
    }

    @Test
    void modulesTheDeviceHasNoRoomForAreDecomposedOnTheHostAndNamedInOneNote() throws Exception {
        CombineReport cpu = combine(new CpuBackend(3), dir.resolve("cpu"));
        CombineReport full = combine(new FullDevice(), dir.resolve("full"));
        assertEquals(cpu.modules.size(), full.modules.size(), "every module written");
        for (String f : List.of(CombinedAdapterWriter.WEIGHTS, CombinedAdapterWriter.CONFIG)) {
            assertArrayEquals(Files.readAllBytes(dir.resolve("cpu").resolve(f)), Files.readAllBytes(dir.resolve("full").resolve(f)),
                    f + ": the modules decomposed on the host are the CPU engine's");
        }
        List<String> notes = full.notes.stream().filter(n -> n.contains("decomposed on the CPU")).toList();
        assertEquals(1, notes.size(), "one note: " + full.notes);
        String note = notes.get(0);
        assertTrue(note.startsWith("4 modules found no room in the free memory of cuda:0 for their dense delta or its SVD"), note);
        for (String m : List.of("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj",
                "model.layers.1.self_attn.v_proj")) {
            assertTrue(note.contains(m), m + " named: " + note);
        }
        assertFalse(note.contains("k_proj") || note.contains("o_proj"), "the modules that stayed on the device are not named: " + note);
    }
}
