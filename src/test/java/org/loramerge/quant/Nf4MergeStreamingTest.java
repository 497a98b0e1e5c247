package org.loramerge.quant;

import java.io.ByteArrayOutputStream;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.ExactReference;
import org.loramerge.engine.cpu.CpuBackend;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * {@code merge --to nf4} streamed in row blocks on several threads, on a weight whose rows (83
 * columns) end in the middle of its 32-element NF4 blocks and whose 260 blocks make a partial
 * nested block: row blocks must be cut so that no NF4 block straddles two workers, and the result
 * must not depend on the block size or the thread count. It must equal the whole weight merged
 * element by element (exact arithmetic, {@link ExactReference}) and quantized in one sequential pass.
 */
class Nf4MergeStreamingTest {
    private static final String CASE = "dq_bs32_bf16_nested_partial";
    private static final String WEIGHT = "model.layers.0.mlp.up_proj.weight";
    private static final int RANK = 2;
    private static final double ALPHA = 3;

    @TempDir
    Path tmp;

    @Test
    void rowBlocksAndThreadsDoNotChangeTheBytesOrTheReport() throws Exception {
        Path base = base();
        Path adapter = adapter();
        byte[][] first = null;
        MergeReport.Survival firstReport = null;
        int[][] runs = {{1, Backend.DEFAULT_BLOCK_BYTES}, {2, 2_000}, {3, 83 * 8 * 70}, {2, 83 * 8 * 100}};
        for (int[] run : runs) {
            Path out = tmp.resolve("out-" + run[0] + "-" + run[1]);
            MergeReport report;
            try (Checkpoint b = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapter)) {
                MergePlan plan = Planner.plan(b, a, PlanOptions.defaults().withTarget(QuantTarget.NF4));
                try (CpuBackend backend = new CpuBackend(run[0]); AtomicOutput o = AtomicOutput.create(out, false, List.of(base, adapter))) {
                    report = MergeRunner.run(plan, backend, o, new MergeRunner.Options(false, run[1]), Progress.silent());
                }
            }
            byte[][] group = group(out);
            if (first == null) {
                first = group;
                firstReport = report.requantization.tensors.get(0);
                assertEquals(expected(base, adapter), List.of(group).subList(0, 4).stream().map(ByteBuffer::wrap).toList());
            } else {
                for (int i = 0; i < group.length; i++) {
                    assertArrayEquals(first[i], group[i], "tensor " + i + " with " + run[0] + " threads, " + run[1] + "-byte blocks");
                }
                // the sums are taken in a fixed order: equal to the last bit
                MergeReport.Survival r = report.requantization.tensors.get(0);
                assertEquals(firstReport.codesChanged(), r.codesChanged());
                assertEquals(firstReport.deltaNorm(), r.deltaNorm());
                assertEquals(firstReport.survivingNorm(), r.survivingNorm());
                assertEquals(firstReport.dot(), r.dot());
            }
        }
    }

    /** codes, absmax codes, nested absmax, quant state of the merged weight. */
    private static byte[][] group(Path out) throws Exception {
        try (Checkpoint c = Checkpoint.open(out)) {
            String[] names = {WEIGHT, WEIGHT + Nf4Tensor.ABSMAX, WEIGHT + Nf4Tensor.NESTED_ABSMAX, WEIGHT + QuantState.TENSOR_SUFFIX};
            byte[][] bytes = new byte[names.length][];
            for (int i = 0; i < names.length; i++) {
                bytes[i] = Nf4Vectors.bytes(c.fileOf(names[i]), names[i]);
            }
            return bytes;
        }
    }

    /** The same four tensors computed here: exact merge element by element, one sequential encoder, the padded JSON. */
    private static List<ByteBuffer> expected(Path base, Path adapter) throws Exception {
        try (Checkpoint b = Checkpoint.open(base); SafetensorsFile a = SafetensorsFile.open(adapter.resolve("adapter_model.safetensors"))) {
            Nf4Tensor t = Nf4Tensor.open(b, WEIGHT);
            int n = (int) t.numElements();
            int cols = (int) t.shape()[1];
            double[] w = new double[n];
            t.decoder().dequantizeRounded(0, n, w, 0);
            float[] la = Nf4Vectors.floats(a, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight");
            float[] lb = Nf4Vectors.floats(a, "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight");
            BigDecimal s = new BigDecimal(ALPHA / RANK);
            float[] x = new float[n];
            for (int i = 0; i < n; i++) {
                BigDecimal dot = BigDecimal.ZERO;
                for (int k = 0; k < RANK; k++) {
                    dot = dot.add(new BigDecimal(lb[(i / cols) * RANK + k]).multiply(new BigDecimal(la[k * cols + i % cols])));
                }
                BigDecimal exact = new BigDecimal(w[i]).add(s.multiply(dot));
                x[i] = (float) FloatFormat.BF16.decode(ExactReference.roundBits(exact, DType.BF16));
            }
            ByteArrayOutputStream packed = new ByteArrayOutputStream();
            Nf4Encoder enc = new Nf4Encoder(n, t.blocksize(), p -> packed.write(p.array(), p.arrayOffset() + p.position(), p.remaining()), null, WEIGHT);
            enc.accept(x, 0, n);
            float[] absmax = enc.finish();
            DoubleQuant.Result dq = DoubleQuant.quantize(absmax, absmax.length);
            QuantState state = QuantState.of(t.blocksize(), DType.BF16, t.shape(), new QuantState.Nested(256, dq.offset()));
            ByteBuffer nested = ByteBuffer.allocate(dq.nestedAbsmax().length * 4).order(ByteOrder.LITTLE_ENDIAN);
            nested.asFloatBuffer().put(dq.nestedAbsmax());
            return List.of(ByteBuffer.wrap(packed.toByteArray()), ByteBuffer.wrap(dq.codes()), nested, ByteBuffer.wrap(state.toJson()));
        }
    }

    /** The vectors' [100, 83] double-quantized weight as a model's up_proj, beside a dense norm. */
    private Path base() throws Exception {
        List<QuantModels.Tensor> ts = new ArrayList<>();
        try (SafetensorsFile f = Nf4Vectors.open()) {
            for (QuantModels.Tensor t : QuantModels.read(f)) {
                if (t.name().startsWith(CASE + ".weight")) {
                    ts.add(new QuantModels.Tensor(t.name().replace(CASE + ".weight", WEIGHT), t.dtype(), t.shape(), t.data()));
                }
            }
        }
        ts.add(new QuantModels.Tensor("model.norm.weight", DType.BF16, new long[] {83}, QuantModels.encode(DType.BF16, new double[83])));
        return QuantModels.write(tmp.resolve("base"), ts,
                "{\"model_type\": \"llama\", \"quantization_config\": " + Bnb4BitConfig.toJson(true, DType.BF16) + "}");
    }

    private Path adapter() throws Exception {
        Random rnd = new Random(7);
        double[] a = new double[RANK * 83];
        double[] b = new double[100 * RANK];
        for (int i = 0; i < a.length; i++) {
            a[i] = rnd.nextGaussian() * 0.1;
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = rnd.nextGaussian() * 0.05;
        }
        String prefix = "base_model.model.model.layers.0.mlp.up_proj";
        Path dir = QuantModels.write(tmp.resolve("adapter"), List.of(
                new QuantModels.Tensor(prefix + ".lora_A.weight", DType.F32, new long[] {RANK, 83}, QuantModels.encode(DType.F32, a)),
                new QuantModels.Tensor(prefix + ".lora_B.weight", DType.F32, new long[] {100, RANK}, QuantModels.encode(DType.F32, b))), null);
        java.nio.file.Files.move(dir.resolve("model.safetensors"), dir.resolve("adapter_model.safetensors"));
        java.nio.file.Files.writeString(dir.resolve("adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": " + RANK + ", \"lora_alpha\": " + ALPHA
                + ", \"target_modules\": [\"up_proj\"], \"bias\": \"none\"}");
        return dir;
    }
}
