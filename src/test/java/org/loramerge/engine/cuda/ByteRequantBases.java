package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.loramerge.format.DType;
import org.loramerge.testutil.TinyModels;
import org.loramerge.testutil.TinyModels.Tensor;

/**
 * One-weight FP8 (transformers' fine-grained layout, F32 {@code weight_scale_inv}) and LLM.int8
 * bases that {@code merge --to fp8} and {@code --to int8} requantize, and LoRA adapters for them,
 * for the requantization tests: finite codes (no FP8 NaN code, which the requantizers refuse),
 * positive scales, a band of rows whose base codes are all zero and which the adapter leaves alone
 * (an all-zero quantization block, or zero int8 rows), and odd shapes that end in partial blocks.
 */
final class ByteRequantBases {
    static final String WEIGHT = "model.layers.0.mlp.up_proj.weight";
    static final String STEM = "model.layers.0.mlp.up_proj";

    private ByteRequantBases() {
    }

    /**
     * A base: {@code kind} "fp8-block" ({@code block} x {@code block} scales from the config),
     * "fp8-derived" (no block size in the config, a [rows / 2, cols / 16] grid: blocks of 2 x 16),
     * "fp8-groups" (blocks of one row and {@code block} columns, weight_block_size [1, block]),
     * "fp8-channel" ([rows, 1] scales), "fp8-tensor" (one scale) or "int8"; {@code modelDtype}
     * the dtype the weight dequantizes to (FP8; int8's is F32).
     */
    record Spec(String kind, int rows, int cols, DType modelDtype, int block) {
        @Override
        public String toString() {
            return kind + " " + rows + "x" + cols + " " + modelDtype + (block > 0 ? " block " + block : "");
        }

        /** Rows [0, zeroRows()) of the base are zero and the adapter leaves them. */
        int zeroRows() {
            return kind.equals("fp8-block") ? block : kind.equals("fp8-derived") ? 2 : 1;
        }
    }

    static List<Spec> specs() {
        return List.of(
                new Spec("fp8-block", 300, 260, DType.BF16, 128),
                new Spec("fp8-block", 256, 384, DType.F16, 128),
                new Spec("fp8-block", 130, 200, DType.F32, 128),
                new Spec("fp8-block", 96, 80, DType.BF16, 32),
                new Spec("fp8-derived", 64, 96, DType.BF16, 0),
                // blocks of one row (weight_block_size [1, g]): 8 lanes a group of 128 with a last group of 72 columns, 16 lanes a group of 256
                new Spec("fp8-groups", 40, 328, DType.BF16, 128),
                new Spec("fp8-groups", 24, 512, DType.F32, 256),
                new Spec("fp8-channel", 72, 136, DType.F16, 0),
                new Spec("fp8-tensor", 64, 72, DType.BF16, 0),
                new Spec("fp8-tensor", 300, 260, DType.F16, 0),
                new Spec("fp8-tensor", 130, 200, DType.F32, 0),
                new Spec("int8", 64, 128, DType.F32, 0),
                new Spec("int8", 37, 45, DType.F32, 0),
                new Spec("int8", 20, 1000, DType.F32, 0));
    }

    /** Writes {@code spec}'s model folder into {@code dir}. */
    static Path writeBase(Path dir, Spec spec) {
        SplittableRandom rnd = new SplittableRandom(spec.toString().hashCode());
        int rows = spec.rows();
        int cols = spec.cols();
        List<Tensor> tensors = new ArrayList<>();
        String q;
        byte[] codes = new byte[rows * cols];
        for (int i = 0; i < codes.length; i++) {
            if (i / cols < spec.zeroRows()) {
                continue;
            }
            int b = rnd.nextInt(256);
            if (spec.kind().startsWith("fp8")) {
                codes[i] = (byte) ((b & 0x7F) == 0x7F ? b - 1 : b); // no NaN code
            } else {
                codes[i] = (byte) (b == 0x80 ? 0x81 : b); // -127..127, as bitsandbytes writes
            }
        }
        if (spec.kind().startsWith("fp8")) {
            tensors.add(new Tensor(WEIGHT, DType.F8_E4M3, new long[] {rows, cols}, codes));
            long[] scaleShape;
            String blockSize = "null";
            switch (spec.kind()) {
                case "fp8-block":
                    scaleShape = new long[] {RandomQuantizedWeights.ceil(rows, spec.block()), RandomQuantizedWeights.ceil(cols, spec.block())};
                    blockSize = "[" + spec.block() + ", " + spec.block() + "]";
                    break;
                case "fp8-derived":
                    scaleShape = new long[] {rows / 2, cols / 16};
                    break;
                case "fp8-groups":
                    scaleShape = new long[] {rows, RandomQuantizedWeights.ceil(cols, spec.block())};
                    blockSize = "[1, " + spec.block() + "]";
                    break;
                case "fp8-channel":
                    scaleShape = new long[] {rows, 1};
                    break;
                default:
                    scaleShape = new long[] {};
                    break;
            }
            tensors.add(new Tensor(STEM + ".weight_scale_inv", DType.F32, scaleShape, scales(rnd, RandomQuantizedWeights.count(scaleShape), 1e-3)));
            q = "{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": " + blockSize + "}";
        } else {
            tensors.add(new Tensor(WEIGHT, DType.I8, new long[] {rows, cols}, codes));
            tensors.add(new Tensor(STEM + ".SCB", DType.F32, new long[] {rows}, scales(rnd, rows, 1.0)));
            tensors.add(new Tensor(STEM + ".weight_format", DType.U8, new long[] {}, new byte[] {0}));
            q = "{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true, \"load_in_4bit\": false}";
        }
        return RandomQuantizedWeights.writeModel(dir, tensors, spec.modelDtype(), q);
    }

    /**
     * A rank-4 LoRA adapter of the weight whose B is zero on the base's zero rows; {@code scale}
     * sizes the change ({@code lora_alpha}), large enough to move many codes.
     */
    static Path writeAdapter(Path dir, Spec spec, double scale) {
        int r = 4;
        double[] b = TinyModels.values(spec.rows() * r, 5);
        for (int i = 0; i < spec.zeroRows() * r; i++) {
            b[i] = 0;
        }
        return TinyModels.writeAdapter(dir, TinyModels.loraConfig(r, scale, "[\"up_proj\"]", ""), List.of(
                new Tensor(TinyModels.PEFT_PREFIX + STEM + ".lora_A.weight", DType.F32, new long[] {r, spec.cols()},
                        TinyModels.f32(TinyModels.values(r * spec.cols(), 3))),
                new Tensor(TinyModels.PEFT_PREFIX + STEM + ".lora_B.weight", DType.F32, new long[] {spec.rows(), r}, TinyModels.f32(b))));
    }

    /** Positive fp32 scales of about {@code size} (times e^-2 .. e^2). */
    private static byte[] scales(SplittableRandom rnd, int n, double size) {
        ByteBuffer b = ByteBuffer.allocate(n * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < n; i++) {
            b.putFloat((float) (size * Math.exp(rnd.nextDouble() * 4 - 2)));
        }
        return b.array();
    }
}
