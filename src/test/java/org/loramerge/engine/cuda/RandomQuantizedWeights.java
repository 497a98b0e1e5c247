package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * One-weight model folders in each quantized layout loramerge reads besides NF4 (FP8 in both
 * layouts and every scale scheme, LLM.int8, GPTQ v1/v2 of 2, 4 and 8 bits with act-order, AWQ),
 * with random codes that include the formats' special values (FP8 NaN and infinity codes, every
 * byte and nibble) and random scales that include zeros, negatives, subnormals and values whose
 * products overflow the dequantized dtype, so the device kernels meet every case of the CPU codecs.
 */
final class RandomQuantizedWeights {
    static final String WEIGHT = "model.layers.0.mlp.up_proj.weight";
    private static final String STEM = "model.layers.0.mlp.up_proj";

    private RandomQuantizedWeights() {
    }

    /**
     * One weight to write: {@code kind} names the layout (see {@link #write}), {@code rows x cols}
     * the dequantized [out, in] shape, {@code scaleDtype} the stored scales' dtype, {@code modelDtype}
     * config.json's (FP8's dequantized dtype), {@code group} a group or block size where the layout
     * has one (0: none).
     */
    record Spec(String kind, int rows, int cols, DType scaleDtype, DType modelDtype, int group) {
        @Override
        public String toString() {
            return kind + " " + rows + "x" + cols + " scales " + scaleDtype + ", model " + modelDtype + (group > 0 ? ", group " + group : "");
        }
    }

    static List<Spec> specs() {
        return List.of(
                // transformers fine-grained FP8: 128x128 blocks (partial ones at the edges; rows of 260 take the element-wise path)
                new Spec("fp8-block", 300, 260, DType.F32, DType.BF16, 128),
                new Spec("fp8-block", 256, 384, DType.F32, DType.F16, 128),
                new Spec("fp8-block-ue8m0", 200, 256, DType.F8_E8M0, DType.BF16, 128),
                new Spec("fp8-tensor", 64, 72, DType.F32, DType.F16, 0),
                new Spec("fp8-tensor", 45, 136, DType.F32, DType.BF16, 0),
                new Spec("fp8-tensor", 30, 52, DType.F32, DType.F32, 0),
                // compressed-tensors: the product rounded to the 16-bit scales' dtype first; groups of 12 end inside 16- and 4-element runs
                new Spec("fp8-channel", 48, 64, DType.BF16, DType.BF16, 0),
                new Spec("fp8-channel-e5m2", 40, 96, DType.F16, DType.F32, 0),
                new Spec("fp8-group", 56, 96, DType.F32, DType.F16, 12),
                new Spec("fp8-group", 33, 60, DType.BF16, DType.BF16, 12),
                new Spec("fp8-group", 24, 120, DType.F16, DType.F16, 12),
                // groups of one row in runs of 8 (fp8_requant_groups; rows of 64 and 96 above too): 8 lanes a group of 128, and of 64
                // with a last group of 8 columns; 16 lanes a group of 256
                new Spec("fp8-group", 32, 384, DType.F32, DType.BF16, 128),
                new Spec("fp8-group", 30, 200, DType.F32, DType.F32, 64),
                new Spec("fp8-group", 28, 512, DType.F32, DType.F16, 256),
                // int8 (F32 out) rows of 128, 40 and 36 take 4-element runs, of 45 the element-wise path
                new Spec("int8", 64, 128, DType.F32, DType.F32, 0),
                new Spec("int8", 24, 40, DType.F32, DType.F32, 0),
                new Spec("int8", 28, 36, DType.F32, DType.F32, 0),
                new Spec("int8", 37, 45, DType.F32, DType.F32, 0),
                new Spec("gptq-v1-4bit-actorder", 72, 96, DType.F16, DType.F16, 32),
                new Spec("gptq-v2-8bit", 40, 64, DType.F16, DType.F16, 0),
                new Spec("gptq-v1-2bit", 32, 128, DType.BF16, DType.BF16, 16),
                // groups of 8 end inside the 16 columns of a 2-bit word without act-order
                new Spec("gptq-v1-2bit", 48, 64, DType.F16, DType.F16, 8),
                new Spec("gptq-v2-4bit", 56, 256, DType.F32, DType.F32, 64),
                new Spec("awq", 80, 64, DType.F16, DType.F16, 32),
                new Spec("awq", 136, 96, DType.BF16, DType.BF16, 32),
                // groups ending inside a thread's 8 columns; rows of 44 end in 4 of them (element-wise stores), of 40 in a partial tile
                new Spec("awq", 48, 44, DType.F16, DType.F16, 4),
                new Spec("awq", 40, 40, DType.F32, DType.F32, 12),
                // more than one tile of 256 columns: a partial one of 8, and one of 44 (ending in 4 columns)
                new Spec("awq", 72, 520, DType.F16, DType.F16, 8),
                new Spec("awq", 24, 300, DType.BF16, DType.BF16, 12));
    }

    /** Writes {@code spec}'s model folder (model.safetensors, config.json) into {@code dir}. */
    static Path write(Path dir, Spec spec) {
        SplittableRandom rnd = new SplittableRandom(spec.toString().hashCode());
        int rows = spec.rows();
        int cols = spec.cols();
        List<Tensor> tensors = new ArrayList<>();
        String q;
        String kind = spec.kind();
        if (kind.startsWith("fp8")) {
            boolean e5m2 = kind.endsWith("e5m2");
            tensors.add(new Tensor(WEIGHT, e5m2 ? DType.F8_E5M2 : DType.F8_E4M3, new long[] {rows, cols}, randomBytes(rnd, rows * cols)));
            boolean transformers = kind.startsWith("fp8-block") || kind.equals("fp8-tensor");
            long[] scaleShape;
            if (kind.startsWith("fp8-block")) {
                scaleShape = new long[] {ceil(rows, spec.group()), ceil(cols, spec.group())};
            } else if (kind.equals("fp8-tensor")) {
                scaleShape = new long[] {};
            } else if (kind.startsWith("fp8-channel")) {
                scaleShape = new long[] {rows, 1};
            } else {
                scaleShape = new long[] {rows, ceil(cols, spec.group())};
            }
            tensors.add(new Tensor(STEM + (transformers ? ".weight_scale_inv" : ".weight_scale"), spec.scaleDtype(), scaleShape,
                    scales(rnd, spec.scaleDtype(), count(scaleShape))));
            if (transformers) {
                q = "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": "
                        + (kind.equals("fp8-tensor") ? "null" : "[" + spec.group() + ", " + spec.group() + "]")
                        + (spec.scaleDtype() == DType.F8_E8M0 ? ", \"scale_fmt\": \"ue8m0\"" : "") + "}";
            } else {
                String strategy = kind.startsWith("fp8-channel") ? "\"strategy\": \"channel\"" : "\"strategy\": \"group\", \"group_size\": " + spec.group();
                q = "{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", \"config_groups\": {\"group_0\": {\"targets\": "
                        + "[\"Linear\"], \"weights\": {\"type\": \"float\", \"num_bits\": 8, \"symmetric\": true, " + strategy + "}}}}";
            }
        } else if (kind.equals("int8")) {
            tensors.add(new Tensor(WEIGHT, DType.I8, new long[] {rows, cols}, randomBytes(rnd, rows * cols)));
            tensors.add(new Tensor(STEM + ".SCB", DType.F32, new long[] {rows}, scales(rnd, DType.F32, rows)));
            tensors.add(new Tensor(STEM + ".weight_format", DType.U8, new long[] {}, new byte[] {0}));
            q = "{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true, \"load_in_4bit\": false}";
        } else if (kind.startsWith("gptq")) {
            int bits = kind.contains("2bit") ? 2 : kind.contains("8bit") ? 8 : 4;
            int perWord = 32 / bits;
            int groupSize = spec.group() > 0 ? spec.group() : cols;
            int groups = ceil(cols, groupSize);
            tensors.add(new Tensor(STEM + ".qweight", DType.I32, new long[] {cols / perWord, rows}, randomBytes(rnd, cols / perWord * rows * 4)));
            tensors.add(new Tensor(STEM + ".qzeros", DType.I32, new long[] {groups, rows / perWord}, randomBytes(rnd, groups * (rows / perWord) * 4)));
            tensors.add(new Tensor(STEM + ".scales", spec.scaleDtype(), new long[] {groups, rows}, scales(rnd, spec.scaleDtype(), groups * rows)));
            boolean actOrder = kind.contains("actorder");
            ByteBuffer g = ByteBuffer.allocate(cols * 4).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < cols; i++) {
                g.putInt(actOrder ? rnd.nextInt(groups) : i / groupSize); // act-order: any column in any group
            }
            tensors.add(new Tensor(STEM + ".g_idx", DType.I32, new long[] {cols}, g.array()));
            q = "{\"quant_method\": \"gptq\", \"bits\": " + bits + ", \"group_size\": " + (spec.group() > 0 ? spec.group() : -1)
                    + ", \"desc_act\": " + actOrder + ", \"sym\": false, \"checkpoint_format\": \"" + (kind.contains("v1") ? "gptq" : "gptq_v2") + "\"}";
        } else if (kind.equals("awq")) {
            int groups = ceil(cols, spec.group());
            tensors.add(new Tensor(STEM + ".qweight", DType.I32, new long[] {cols, rows / 8}, randomBytes(rnd, cols * rows / 8 * 4)));
            tensors.add(new Tensor(STEM + ".qzeros", DType.I32, new long[] {groups, rows / 8}, randomBytes(rnd, groups * rows / 8 * 4)));
            tensors.add(new Tensor(STEM + ".scales", spec.scaleDtype(), new long[] {groups, rows}, scales(rnd, spec.scaleDtype(), groups * rows)));
            q = "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": " + spec.group() + ", \"zero_point\": true, \"version\": \"gemm\"}";
        } else {
            throw new IllegalArgumentException(kind);
        }
        return writeModel(dir, tensors, spec.modelDtype(), q);
    }

    /** A one-file llama model of {@code tensors} in {@code dir}, its config.json with {@code modelDtype} and {@code quantizationConfig}. */
    static Path writeModel(Path dir, List<Tensor> tensors, DType modelDtype, String quantizationConfig) {
        TinyModels.writeSafetensors(dir.resolve("model.safetensors"), tensors);
        TinyModels.writeText(dir.resolve("config.json"), "{\"model_type\": \"llama\", \"torch_dtype\": \"" + modelDtype.torchName()
                .replace("torch.", "") + "\", \"tie_word_embeddings\": false, \"quantization_config\": " + quantizationConfig + "}\n");
        return dir;
    }

    static int ceil(int a, int b) {
        return (a + b - 1) / b;
    }

    static int count(long[] shape) {
        int n = 1;
        for (long d : shape) {
            n *= (int) d;
        }
        return n;
    }

    /** Every byte value at least once (when n >= 256), then random bytes. */
    private static byte[] randomBytes(SplittableRandom rnd, int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) {
            b[i] = (byte) (i < 256 ? i : rnd.nextInt(256));
        }
        return b;
    }

    /**
     * Finite scales in {@code dtype}: mostly ordinary magnitudes of either sign, with zeros,
     * subnormals of the dtype, and values large enough that a code times them overflows a 16-bit dtype.
     */
    private static byte[] scales(SplittableRandom rnd, DType dtype, int n) {
        if (dtype == DType.F8_E8M0) {
            byte[] b = new byte[n];
            for (int i = 0; i < n; i++) {
                b[i] = (byte) (i % 7 == 3 ? 120 + rnd.nextInt(30) : 110 + rnd.nextInt(20)); // 2^(b - 127): 2^-17 .. 2^22
            }
            return b;
        }
        FloatFormat f = FloatFormat.of(dtype);
        ByteBuffer b = ByteBuffer.allocate(n * dtype.sizeInBytes()).order(ByteOrder.LITTLE_ENDIAN);
        double tiny = dtype == DType.F16 ? 0x1p-24 : dtype == DType.BF16 ? 0x1p-133 : 0x1p-149;
        // times 0.5 .. 1.5: finite in the dtype; BF16's up to its top binades, where z * s overflows fp32
        double large = dtype == DType.F16 ? 40000 : dtype == DType.BF16 ? 2e38 : 1e36;
        for (int i = 0; i < n; i++) {
            double v;
            switch (i % 11) {
                case 2:
                    v = 0.0;
                    break;
                case 5:
                    v = tiny * (1 + rnd.nextInt(200));
                    break;
                case 7:
                    v = large * (0.5 + rnd.nextDouble());
                    break;
                default:
                    v = Math.exp(rnd.nextDouble() * 8 - 9);
                    break;
            }
            v *= rnd.nextInt(4) == 0 ? -1 : 1;
            f.putBits(b, i, f.encode(f.round(v)));
        }
        return b.array();
    }
}
