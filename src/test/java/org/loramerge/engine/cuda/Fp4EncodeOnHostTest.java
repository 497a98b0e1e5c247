package org.loramerge.engine.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.quant.FourBitCode;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * The FP4 comparison tree of the device kernels (kernels/fourbit.cuh fp4_encode, which fp4_requant
 * and fp4_quantize call) built for the host by g++ (kernels/test/fp4_host.cpp) and run on every
 * decision value of the tree and the floats a few ulps either side, zeros of both signs, NaNs,
 * infinities, subnormals and a million random floats: every code is the CPU codec's
 * (FourBitCode.FP4.encode). What the rest of those kernels computes is NF4's, which
 * CudaNf4Test checks on the GPU with both code books. Skips without g++.
 */
class Fp4EncodeOnHostTest {
    /** dQuantizeFP4's literals, as FourBitCode parses them. */
    private static final float[] DECISIONS = {0.29166667f, 0.583333f, 0.8333333f, 0.4166667f, 0.0859375f, 0.20833333f, 0.00260417f};

    @TempDir
    Path dir;

    @Test
    void theKernelsFp4CodesAreTheCpuCodecsForEveryDecisionValueAndRandomFloats() throws Exception {
        assumeTrue(run("g++", "--version").exit() == 0, "no g++ here");
        Path exe = dir.resolve("fp4_host");
        HostCommand.Result built = run("g++", "-std=c++20", "-O1", "-ffp-contract=off", "-Wall", "-Wno-unknown-pragmas",
                "-I" + Path.of("kernels/test/host").toAbsolutePath(), "-I" + Path.of("kernels").toAbsolutePath(), "-o", exe.toString(),
                Path.of("kernels/test/fp4_host.cpp").toAbsolutePath().toString());
        assertEquals(0, built.exit(), built.output());
        float[] values = values();
        ByteBuffer in = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) {
            in.putInt(Float.floatToRawIntBits(v));
        }
        Files.write(dir.resolve("values.bin"), in.array());
        HostCommand.Result r = run(exe.toString(), dir.resolve("values.bin").toString(), dir.resolve("codes.bin").toString());
        assertEquals(0, r.exit(), r.output());
        byte[] codes = Files.readAllBytes(dir.resolve("codes.bin"));
        assertEquals(values.length, codes.length, r.output());
        boolean[] seen = new boolean[16];
        for (int i = 0; i < values.length; i++) {
            int want = FourBitCode.FP4.encode(values[i]);
            seen[want] = true;
            if (codes[i] != want) {
                fail("fp4_encode(" + values[i] + " = 0x" + Integer.toHexString(Float.floatToRawIntBits(values[i])) + ") is " + codes[i]
                        + ", the CPU codec's code " + want);
            }
        }
        for (int c = 0; c < 16; c++) {
            assertEquals(true, seen[c], "no value took code " + c);
        }
    }

    private static float[] values() {
        List<Float> v = new ArrayList<>();
        for (float d : DECISIONS) {
            for (float s : new float[] {d, -d}) {
                for (int ulps = -3; ulps <= 3; ulps++) {
                    v.add(Float.intBitsToFloat(Float.floatToRawIntBits(s) + ulps));
                }
            }
        }
        for (float f : new float[] {0f, -0f, Float.NaN, Float.intBitsToFloat(0xFFC00001), Float.intBitsToFloat(0x7F800001),
            Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, Float.MIN_VALUE, -Float.MIN_VALUE, Float.MIN_NORMAL, Float.MAX_VALUE, 1f, -1f,
            0.5f, -0.5f, 0.25f, 0.16666667f, 0.33333333f, 0.66666667f, 0.005208333333f}) {
            v.add(f);
        }
        SplittableRandom rnd = new SplittableRandom(4);
        for (int i = 0; i < 500_000; i++) {
            v.add(Float.intBitsToFloat(rnd.nextInt())); // every exponent, NaNs among them
            v.add((float) (rnd.nextDouble() * 2.4 - 1.2));
        }
        float[] out = new float[v.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = v.get(i);
        }
        return out;
    }

    private HostCommand.Result run(String... command) throws Exception {
        return HostCommand.run(dir, Duration.ofMinutes(5), command);
    }
}
