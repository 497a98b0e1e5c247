package org.loramerge.pipeline;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.loramerge.engine.Backend;
import org.loramerge.engine.CombinationDeltas;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.FactorCombination;
import org.loramerge.engine.Pools;
import org.loramerge.engine.WeightDelta;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.Json;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.plan.AdapterPlan;
import org.loramerge.plan.CombineMethod;

/**
 * Writes the new adapter of {@code combine} into an {@link AtomicOutput}: adapter_model.safetensors
 * (each module's combined factors, zero-padded to the plan's rank as PEFT pads them, rounded once
 * from float64 into {@code dtype}) and adapter_config.json, committed together, as a PEFT
 * save_pretrained folder that PEFT 0.21 loads. Modules are combined on {@code threads} threads (at
 * most the backend's parallelism: on a GPU each holds a dense Δ in device memory, within the
 * engine's budget for them), a bounded window of them ahead of the one being written, so memory
 * follows a few modules' factors; the bytes do not depend on the thread count (each module is
 * computed on its own). The dense Δ of the {@code _svd} methods is formed and decomposed on {@code
 * backend} ({@link Backend#openCombination}): the CPU engine's factors are the same bits on every
 * run; the GPU's are the same SVD with other rounding (docs/FORMATS.md §8.3). A module whose Δ or
 * SVD the device has no room for (a GPU shared with other work) is decomposed on the host instead,
 * and the report names it.
 */
public final class CombinedAdapterWriter {
    static final String WEIGHTS = "adapter_model.safetensors";
    static final String CONFIG = "adapter_config.json";

    private CombinedAdapterWriter() {
    }

    public static CombineReport write(AdapterPlan plan, DType dtype, AtomicOutput out, int threads, Backend backend) throws Exception {
        long start = System.nanoTime();
        if (!dtype.isMergeable()) {
            throw new IllegalArgumentException("adapter factors are F32, F16 or BF16, not " + dtype);
        }
        CombineReport report = new CombineReport();
        int rank = plan.rank();
        List<SafetensorsWriter.Entry> entries = new ArrayList<>();
        for (AdapterPlan.Module m : plan.modules()) {
            entries.add(new SafetensorsWriter.Entry(m.aKey(), dtype, m.aShapeAt(rank)));
            entries.add(new SafetensorsWriter.Entry(m.bKey(), dtype, m.bShapeAt(rank)));
        }
        if (threads < 1) {
            throw new IllegalArgumentException("threads must be at least 1, got " + threads);
        }
        FloatFormat f = FloatFormat.of(dtype);
        CombineMethod method = plan.modules().isEmpty() ? null : plan.modules().get(0).update().how().method();
        List<AdapterPlan.Module> modules = plan.modules();
        int workers = Math.min(threads, backend.parallelism());
        ExecutorService pool = Executors.newFixedThreadPool(workers, r -> {
            Thread t = new Thread(r, "loramerge-combine");
            t.setDaemon(true);
            return t;
        });
        // describe() begins with the device: "cpu (16 threads)", "cuda:0 NVIDIA H200" (as ExtractRunner reads it)
        String device = backend.describe().split(" ")[0];
        List<String> onHost = new ArrayList<>();
        List<String> noRoom = new ArrayList<>();
        List<Future<Combined>> ahead = new ArrayList<>();
        try (SafetensorsWriter w = SafetensorsWriter.create(out.dir().resolve(WEIGHTS), entries, Map.of("format", "pt"))) {
            int submitted = 0;
            for (int i = 0; i < modules.size(); i++) {
                while (submitted < modules.size() && submitted < i + 2 * workers) {
                    AdapterPlan.Module next = modules.get(submitted++);
                    ahead.add(pool.submit(() -> combine(next, backend)));
                }
                AdapterPlan.Module m = modules.get(i);
                Combined combined = BlockExecutor.get(ahead.get(i));
                ahead.set(i, null);
                FactorCombination.Factors c = combined.factors();
                if (combined.deviceFull()) {
                    noRoom.add(m.module());
                } else if (combined.svdDevice() != null && !combined.svdDevice().equals(device)) {
                    onHost.add(m.module());
                }
                int r = c.rank();
                int rest = c.a().length / r;
                int outRows = c.b().length / r;
                double[] a = new double[rank * rest];
                System.arraycopy(c.a(), 0, a, 0, r * rest); // rows r .. rank stay zero
                double[] b = new double[outRows * rank];
                for (int o = 0; o < outRows; o++) {
                    System.arraycopy(c.b(), o * r, b, o * rank, r);
                }
                w.write(encode(f, a));
                w.write(encode(f, b));
                report.modules.add(new CombineReport.ModuleOutcome(m.module(), m.update().parts().size(), r, m.aShapeAt(rank), m.bShapeAt(rank)));
            }
            w.finish();
        } finally {
            // on a failure, modules may still be combining on the engine (on a GPU, in its workers'
            // memory and streams), which the caller closes next
            Pools.cancelAndAwait(pool, ahead);
        }
        Files.write(out.dir().resolve(CONFIG), Json.python(plan.config()).getBytes(StandardCharsets.UTF_8));
        out.commit();
        report.output = out.target().toString();
        report.method = method == null ? null : method.cliName();
        report.rank = rank;
        report.dtype = dtype.name();
        report.engine = backend.describe();
        if (!onHost.isEmpty()) {
            report.notes.add(onHost.size() + " modules whose dense delta is too large to keep in the memory of " + device + " (over 3 GiB in "
                    + "fp64) or combines more adapters than its kernels hold (8) were decomposed on the CPU: " + String.join(", ", onHost));
        }
        if (!noRoom.isEmpty()) {
            report.notes.add(noRoom.size() + " modules found no room in the free memory of " + device + " for their dense delta or its SVD "
                    + "(the device is shared with other work, or smaller) and were decomposed on the CPU: " + String.join(", ", noRoom));
        }
        report.warnings.addAll(plan.warnings());
        report.notes.addAll(plan.notes());
        report.seconds = (System.nanoTime() - start) / 1e9;
        return report;
    }

    /**
     * A module's factors, where its dense Δ was decomposed (null where none was formed), and whether
     * that was the host because the backend's device had no room for it.
     */
    private record Combined(FactorCombination.Factors factors, String svdDevice, boolean deviceFull) {
    }

    private static Combined combine(AdapterPlan.Module m, Backend backend) throws Exception {
        String[] where = new String[1];
        try {
            FactorCombination.Factors f = FactorCombination.combine(m.update(), (dense, rows, cols) -> {
                WeightDelta d = backend.openCombination(dense, rows, cols);
                where[0] = d.device();
                return d;
            });
            return new Combined(f, where[0], false);
        } catch (DeviceOutOfMemoryException e) {
            // the whole module again from its factors, Δ on the host: the CPU engine's bits, within the GPU's tolerance of them
            return new Combined(FactorCombination.combine(m.update(), CombinationDeltas.HOST), "cpu", true);
        }
    }

    private static ByteBuffer encode(FloatFormat f, double[] v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * f.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < v.length; i++) {
            f.putBits(b, i, f.encode(f.round(v[i])));
        }
        return b;
    }

}
