package org.loramerge.quant;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The codec against every vector of scripts/fixtures/nf4_reference.py, bit for bit, both directions. */
class Nf4CodecVectorsTest {

    static Stream<Nf4Vectors.Case> cases() {
        return Nf4Vectors.cases().stream();
    }

    static Stream<Nf4Vectors.Case> bitsandbytesCases() {
        return Nf4Vectors.bitsandbytesCases().stream();
    }

    @Test
    void bitsandbytesQuantizedEveryReferenceInputItCanWrite() {
        java.util.Set<String> written = new java.util.TreeSet<>();
        Nf4Vectors.cases().stream().filter(c -> !c.orPackedPre047()).forEach(c -> written.add(c.name()));
        java.util.Set<String> bnb = new java.util.TreeSet<>();
        Nf4Vectors.bitsandbytesCases().forEach(c -> bnb.add(c.name()));
        assertEquals(written, bnb, "src/test/resources/bnb/vectors holds bitsandbytes' bytes for every input of src/test/resources/nf4 "
                + "but the one packed as bitsandbytes before 0.47 did; regenerate it (scripts/fixtures/make_bnb_fixtures.sh)");
        assertTrue(bnb.contains("zero_blocks_dq_bf16") && bnb.contains("fp4_dq_zero_blocks_bf16"), "the offset cases: " + bnb);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("bitsandbytesCases")
    void quantizingEveryInputGivesBitsandbytesOwnBytes(Nf4Vectors.Case c) throws Exception {
        quantizeIsBitExact(c);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("bitsandbytesCases")
    void dequantizingBitsandbytesBytesGivesItsDequantizeValues(Nf4Vectors.Case c) throws Exception {
        dequantizeIsBitExact(c);
    }

    @Test
    void vectorsCoverTheEdgeCasesTheyClaim() {
        List<Nf4Vectors.Case> cases = Nf4Vectors.cases();
        assertTrue(cases.stream().anyMatch(c -> c.blocksize() == 32));
        assertTrue(cases.stream().anyMatch(c -> c.blocksize() == 64));
        assertTrue(cases.stream().anyMatch(c -> c.blocksize() == 128));
        assertTrue(cases.stream().anyMatch(c -> c.blocksize() == 4096 && c.numElements() % 4096 != 0));
        assertTrue(cases.stream().anyMatch(c -> c.numElements() % 2 == 1));
        assertTrue(cases.stream().anyMatch(c -> c.doubleQuant() && c.numBlocks() > 256 && c.numBlocks() % 256 != 0));
        assertTrue(cases.stream().anyMatch(c -> !c.doubleQuant()));
        assertTrue(cases.stream().anyMatch(Nf4Vectors.Case::orPackedPre047));
        assertTrue(cases.stream().anyMatch(c -> c.code() == FourBitCode.FP4 && c.doubleQuant()));
        assertTrue(cases.stream().anyMatch(c -> c.dtype() == org.loramerge.format.DType.F32 && c.name().startsWith("ties")));
        assertTrue(Nf4Vectors.dir().resolve("model.safetensors").toFile().length()
                + Nf4Vectors.dir().resolve("index.json").toFile().length() < 300_000, "vectors stay tiny");
    }

    @Test
    void tablesMatchTheReference() throws Exception {
        try (SafetensorsFile f = Nf4Vectors.open()) {
            assertArrayEquals(Nf4Vectors.floats(f, "nf4.quant_map"), Nf4Codec.quantMap());
            assertArrayEquals(Nf4Vectors.floats(f, "nf4.thresholds"), Nf4Codec.thresholds());
            assertArrayEquals(Nf4Vectors.floats(f, "dynamic_map.signed"), DynamicMap.signed());
        }
        String[] hex = Nf4Vectors.index().get("dynamic_map_signed_f32_bits").asText().split(" ");
        float[] map = DynamicMap.signed();
        assertEquals(256, hex.length);
        for (int i = 0; i < 256; i++) {
            assertEquals(Integer.parseUnsignedInt(hex[i], 16), Float.floatToRawIntBits(map[i]), "entry " + i);
        }
    }

    @Test
    void dynamicMapIsSortedAndHoldsZeroAndOneButNotMinusOne() {
        float[] map = DynamicMap.signed();
        for (int i = 1; i < 256; i++) {
            assertTrue(map[i - 1] < map[i], "strictly ascending at " + i);
        }
        assertEquals(0.0f, map[DynamicMap.ZERO_CODE]);
        assertEquals(1.0f, map[255]);
        // bitsandbytes' signed dynamic map has no -1: its smallest entry is the negated largest mean
        assertEquals(-0.99296875f, map[0]);
        assertFalse(Arrays.asList(box(map)).contains(-1.0f));
        assertEquals(127, Arrays.stream(box(map)).filter(v -> v < 0).count());
    }

    @Test
    void dynamicMapSearchMatchesTheKernelAtEveryMidpoint() {
        // the reference's dQuantize on each fp32 midpoint (a+b)*0.5f and one ulp either side: the
        // kernel's tie goes to the lower entry or the upper one depending on the search path
        float[] map = DynamicMap.signed();
        String[] probes = Nf4Vectors.index().get("dynamic_map_search_probes").asText().split(" ");
        assertEquals(255 * 3 + 6, probes.length);
        int upperTies = 0;
        for (String p : probes) {
            String[] kv = p.split(":");
            float x = Float.intBitsToFloat(Integer.parseUnsignedInt(kv[0], 16));
            int want = Integer.parseInt(kv[1]);
            assertEquals(want, DynamicMap.quantize(map, x), "x = " + x);
            if (want > 0 && x == (map[want - 1] + map[want]) * 0.5f) {
                upperTies++;
            }
        }
        assertTrue(upperTies > 0 && upperTies < 255, "ties go both ways: " + upperTies + " to the upper entry");
    }

    @Test
    void offsetIsTheExactSumRoundedOnceTimesTheFp32ReciprocalWhereARunningFloatSumIsNot() {
        Random rnd = new Random(11);
        int runningDiffers = 0;
        for (int trial = 0; trial < 200; trial++) {
            int n = 1 + rnd.nextInt(3000);
            float[] v = new float[n];
            java.math.BigDecimal sum = java.math.BigDecimal.ZERO;
            float running = 0f;
            for (int i = 0; i < n; i++) {
                v[i] = (float) Math.abs(rnd.nextGaussian() * Math.exp(4 * rnd.nextGaussian()));
                sum = sum.add(new java.math.BigDecimal(v[i]));
                running += v[i];
            }
            // fl32(S): the fp32 nearest the exact sum (no fp32 neighbour nearer)
            float total = sum.floatValue();
            java.math.BigDecimal err = new java.math.BigDecimal(total).subtract(sum).abs();
            assertTrue(err.compareTo(new java.math.BigDecimal(Math.nextUp(total)).subtract(sum).abs()) <= 0);
            assertTrue(err.compareTo(new java.math.BigDecimal(Math.nextDown(total)).subtract(sum).abs()) <= 0);
            float got = DoubleQuant.offset(v, n);
            assertEquals(total * (1f / n), got, "n = " + n);
            if (running * (1f / n) != got) {
                runningDiffers++;
            }
        }
        assertTrue(runningDiffers > 20, "a running fp32 sum differs in " + runningDiffers + " of 200");
    }

    @Test
    void thresholdsAreTheKernelsFloatLiteralsAndTiesGoLower() {
        float[] t = Nf4Codec.thresholds();
        // the bits nvcc 13.0 writes into the PTX of bitsandbytes' dQuantizeNF4 for its 15 literals
        int[] ptx = {0xBF591CD9, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC, 0xBD3A7871, 0x3D22FAFF,
            0x3DF64863, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9, 0x3F006D03, 0x3F248DAF, 0x3F5C89D9};
        for (int k = 0; k < 15; k++) {
            assertEquals(ptx[k], Float.floatToRawIntBits(t[k]), "threshold " + k);
            assertEquals(k, Nf4Codec.encode(t[k]), "a value equal to threshold " + k + " takes the lower code");
            assertEquals(k + 1, Nf4Codec.encode(Math.nextUp(t[k])));
            assertEquals(k, Nf4Codec.encode(Math.nextDown(t[k])));
            // four literals are one ulp from the fp32 nearest the midpoint: their decimals were printed off a tie
            float nearest = (float) (((double) Nf4Codec.value(k) + Nf4Codec.value(k + 1)) / 2);
            boolean off = k == 0 || k == 8 || k == 12 || k == 14;
            assertEquals(off ? 1 : 0, Math.abs(Float.floatToRawIntBits(t[k]) - Float.floatToRawIntBits(nearest)), "threshold " + k);
        }
        assertEquals(Nf4Codec.ZERO_CODE, Nf4Codec.encode(-0.0f));
        assertEquals(0, Nf4Codec.encode(-1.0f));
        assertEquals(15, Nf4Codec.encode(1.0f));
        assertEquals(Nf4Codec.NAN_CODE, Nf4Codec.encode(Float.NaN), "NaN fails every comparison of the kernel's tree");
        // the reference lists the thresholds that lie above the exact midpoint; there "equal" is nearer the upper value
        for (var k : Nf4Vectors.index().get("thresholds_rounded_up")) {
            int i = k.asInt();
            double mid = ((double) Nf4Codec.value(i) + Nf4Codec.value(i + 1)) / 2;
            assertTrue(t[i] > mid);
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void quantizeIsBitExact(Nf4Vectors.Case c) throws Exception {
        try (SafetensorsFile f = c.open()) {
            byte[] stored = Nf4Vectors.bytes(f, c.name() + ".weight");
            if (c.orPackedPre047()) {
                // bitsandbytes before 0.47 OR-ed each thread's first byte into its second (4 elements a thread)
                for (int i = 1; i < stored.length; i += 2) {
                    assertEquals(stored[i], (byte) (stored[i] | stored[i - 1]), "byte " + i + " holds the bits of byte " + (i - 1));
                }
            }
            float[] input = Nf4Vectors.values(f, c.name() + ".input");
            ByteArrayOutputStream packed = new ByteArrayOutputStream();
            Nf4Encoder enc = new Nf4Encoder(c.code(), c.numElements(), c.blocksize(),
                    b -> packed.write(b.array(), b.arrayOffset() + b.position(), b.remaining()), null, c.name());
            // in uneven chunks, as a merge would hand over row blocks
            int pos = 0;
            int chunk = 1;
            while (pos < input.length) {
                int n = Math.min(chunk, input.length - pos);
                enc.accept(input, pos, n);
                pos += n;
                chunk = chunk * 3 + 1;
            }
            float[] absmax = enc.finish();
            byte[] want = packed.toByteArray().clone();
            if (c.orPackedPre047()) {
                for (int i = 1; i < want.length; i += 2) {
                    want[i] |= want[i - 1];
                }
                assertFalse(Arrays.equals(want, packed.toByteArray()), "the OR changed some bytes");
            }
            assertArrayEquals(stored, want, "packed codes");
            // the same codes from whole blocks encoded out of order, as merge --to nf4's workers do
            byte[] raw = Nf4Vectors.bytes(f, c.name() + ".input");
            FloatFormat fmt = FloatFormat.of(c.dtype());
            byte[] byBlocks = new byte[(int) Nf4Codec.packedBytes(c.numElements())];
            float[] absmaxByBlocks = new float[absmax.length];
            int size = fmt.sizeInBytes();
            for (long pair = (c.numBlocks() - 1) / 2; pair >= 0; pair--) { // two blocks at a time, last pair first
                long first = pair * 2 * c.blocksize();
                int count = (int) (Math.min(c.numElements(), first + 2L * c.blocksize()) - first);
                ByteBuffer src = ByteBuffer.wrap(raw, (int) (first * size), count * size).slice().order(java.nio.ByteOrder.LITTLE_ENDIAN);
                Nf4Encoder.encodeBlocks(c.code(), src, fmt, c.numElements(), c.blocksize(), first, count, byBlocks, absmaxByBlocks, null, c.name());
            }
            assertArrayEquals(packed.toByteArray(), byBlocks, "codes of whole blocks encoded apart");
            assertArrayEquals(absmax, absmaxByBlocks);
            QuantState.Nested nested = null;
            if (c.doubleQuant()) {
                DoubleQuant.Result dq = DoubleQuant.quantize(absmax, absmax.length);
                assertArrayEquals(Nf4Vectors.bytes(f, c.name() + ".weight.absmax"), dq.codes(), "8-bit absmax codes");
                assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".weight.nested_absmax"), dq.nestedAbsmax(), "nested_absmax");
                nested = new QuantState.Nested(DoubleQuant.NESTED_BLOCKSIZE, dq.offset());
            } else {
                assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".weight.absmax"), absmax, "absmax");
            }
            QuantState state = QuantState.of(c.code(), c.blocksize(), c.dtype(), c.shape(), nested);
            byte[] json = Nf4Vectors.bytes(f, c.name() + ".weight" + state.tensorSuffix());
            assertEquals(new String(json, StandardCharsets.UTF_8), new String(state.toJson(), StandardCharsets.UTF_8));
            assertEquals(state, QuantState.parse(json, null, c.name()));
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("cases")
    void dequantizeIsBitExact(Nf4Vectors.Case c) throws Exception {
        try (Checkpoint ckpt = Checkpoint.open(c.dir())) {
            Nf4Tensor t = Nf4Tensor.open(ckpt, c.name() + ".weight");
            assertEquals(c.doubleQuant(), t.isDoubleQuant());
            assertEquals(c.dtype(), t.dtype());
            Nf4Decoder d = t.decoder();
            SafetensorsFile f = ckpt.fileOf(c.name() + ".input");
            int n = (int) c.numElements();
            if (c.has(".absmax_decoded")) {
                assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".absmax_decoded"), d.absmax(0, (int) c.numBlocks()));
            }
            float[] f32 = new float[n];
            d.dequantize(0, n, f32, 0);
            if (c.has(".dequant_f32")) {
                assertArrayEquals(Nf4Vectors.floats(f, c.name() + ".dequant_f32"), f32);
            }
            double[] rounded = new double[n];
            d.dequantizeRounded(0, n, rounded, 0);
            float[] want = Nf4Vectors.values(f, c.name() + ".dequant");
            // the bytes a merge reads for an NF4 source: the reference's dequantized tensor, bit for bit
            ByteBuffer bits = ByteBuffer.allocate(n * c.dtype().sizeInBytes()).order(java.nio.ByteOrder.LITTLE_ENDIAN);
            d.dequantizeTo(0, n, bits);
            assertArrayEquals(Nf4Vectors.bytes(f, c.name() + ".dequant"), bits.array());
            FloatFormat fmt = FloatFormat.of(c.dtype());
            for (int i = 0; i < n; i++) {
                assertEquals(Double.doubleToRawLongBits(want[i]), Double.doubleToRawLongBits(rounded[i]), "element " + i);
                assertEquals(fmt.round(f32[i]), rounded[i]);
            }
            // any sub-range, odd starts and block-crossing ends included, gives the same values
            Random rnd = new Random(c.name().hashCode());
            for (int k = 0; k < 20; k++) {
                int a = rnd.nextInt(n);
                int len = 1 + rnd.nextInt(Math.min(n - a, 3 * c.blocksize()));
                float[] part = new float[len + 3];
                d.dequantize(a, len, part, 3);
                assertArrayEquals(Arrays.copyOfRange(f32, a, a + len), Arrays.copyOfRange(part, 3, 3 + len), "range " + a + "+" + len);
            }
        }
    }

    @Test
    void zeroBlocksTakeCodeZeroAndDecodeAsBitsandbytesDoes() throws Exception {
        try (Checkpoint ckpt = Checkpoint.open(Nf4Vectors.dir())) {
            Nf4Tensor dqTensor = Nf4Tensor.open(ckpt, "zero_blocks_dq_bf16.weight");
            Nf4Decoder d = dqTensor.decoder();
            float[] absmax = d.absmax(0, 6);
            // double quantization decodes a zero block's absmax to about ±0.7% of nested_absmax, not 0; the
            // kernel's 0·(1/0) = NaN gives code 0 (-1.0), so the block decodes to -absmax', as in bitsandbytes
            assertNotEquals(0f, absmax[1]);
            float[] v = new float[64];
            for (int block : new int[] {1, 3}) {
                d.dequantize(block * 64L, 64, v, 0);
                for (float x : v) {
                    assertEquals(-absmax[block], x, "block " + block);
                }
            }
            Nf4Decoder plain = Nf4Tensor.open(ckpt, "zero_blocks_bf16.weight").decoder();
            assertEquals(0f, plain.absmax(1, 1)[0]);
            for (int block : new int[] {1, 3}) {
                plain.dequantize(block * 64L, 64, v, 0);
                for (float x : v) {
                    // -1.0 · 0 = -0.0, even for the block of +0.0 inputs
                    assertEquals(Float.floatToRawIntBits(-0.0f), Float.floatToRawIntBits(x), "block " + block);
                }
            }
        }
        byte[] codes = new byte[63];
        float[] zeros = new float[63];
        assertEquals(0f, Nf4Codec.quantizeBlock(zeros, 0, 63, codes, 0));
        for (int i = 0; i < 63; i++) {
            assertEquals(Nf4Codec.NAN_CODE, codes[i], "element " + i);
        }
        assertEquals(Nf4Codec.NAN_CODE, Nf4Codec.paddingCode(0f), "the padding of an odd count after an all-zero block");
        assertEquals(Nf4Codec.ZERO_CODE, Nf4Codec.paddingCode(0.5f));
    }

    @Test
    void aWeightPackedBeforeBitsandbytes047IsReadAsStoredWithAWarning() throws Exception {
        try (Checkpoint ckpt = Checkpoint.open(Nf4Vectors.dir())) {
            Nf4Tensor old = Nf4Tensor.open(ckpt, "bs1024_bf16_or_packed_pre047.weight");
            assertTrue(old.warnings().stream().anyMatch(w -> w.contains("before 0.47") && w.contains("as stored")), old.warnings().toString());
            // dequantizeIsBitExact checks its values: the stored nibbles, decoded as every bitsandbytes version decodes them
            for (String fine : new String[] {"bs4096_bf16_partial.weight", "bs64_bf16_basic.weight"}) {
                assertTrue(Nf4Tensor.open(ckpt, fine).warnings().isEmpty(), fine + " is packed as bitsandbytes packs it today");
            }
        }
    }

    @Test
    void fastMathEdgesFlushSubnormalsAndHugeAbsmax() {
        byte[] codes = new byte[32];
        float[] subnormal = new float[32];
        Arrays.fill(subnormal, 3e-39f);
        subnormal[5] = -1e-40f;
        assertEquals(0f, Nf4Codec.quantizeBlock(subnormal, 0, 32, codes, 0), "subnormal values count as 0: absmax 0");
        for (byte c : codes) {
            assertEquals(Nf4Codec.NAN_CODE, c);
        }
        float[] huge = new float[32];
        Arrays.fill(huge, 1e30f);
        huge[0] = 1e38f; // above 2^126: the reciprocal is flushed to 0, every element scales to 0
        huge[1] = -1e38f;
        assertEquals(1e38f, Nf4Codec.quantizeBlock(huge, 0, 32, codes, 0));
        for (byte c : codes) {
            assertEquals(Nf4Codec.ZERO_CODE, c);
        }
        float[] mixed = new float[32];
        Arrays.fill(mixed, 1e-39f);
        mixed[0] = 0.5f;
        mixed[1] = -0.25f;
        assertEquals(0.5f, Nf4Codec.quantizeBlock(mixed, 0, 32, codes, 0));
        assertEquals(15, codes[0]);
        for (int i = 2; i < 32; i++) {
            assertEquals(Nf4Codec.ZERO_CODE, codes[i], "a subnormal element scales to 0");
        }
        // dequantizing flushes a subnormal product: code 15 times an absmax below 2^-126 gives +0
        assertEquals(0, Float.floatToRawIntBits(Nf4Codec.dequantize(15, 1e-39f)));
        assertEquals(Float.floatToRawIntBits(-0.0f), Float.floatToRawIntBits(Nf4Codec.dequantize(1, 1.5e-38f)));
    }

    @Test
    void reciprocalVectorsWouldFailWithDivision() throws Exception {
        // the case exists to pin down x·rcp(absmax): check that division really gives other codes there
        try (SafetensorsFile f = Nf4Vectors.open()) {
            float[] in = Nf4Vectors.values(f, "reciprocal_not_division_f32.input");
            int differ = 0;
            for (int b = 0; b < in.length / 32; b++) {
                float a = Nf4Codec.absmax(in, b * 32, 32);
                float r = CudaFastMath.rcp(a);
                for (int i = b * 32; i < b * 32 + 32; i++) {
                    if (Nf4Codec.encode(CudaFastMath.mul(in[i], r)) != Nf4Codec.encode(in[i] / a)) {
                        differ++;
                    }
                }
            }
            assertTrue(differ >= 4, "only " + differ + " elements tell the two apart");
        }
    }

    @Test
    void approximateReciprocalVectorsWouldFailWithTheCorrectlyRoundedOne() throws Exception {
        // the case pins down the device's rcp.approx (CudaFastMath's table): RN(1/absmax) gives other codes there
        try (SafetensorsFile f = Nf4Vectors.open()) {
            float[] in = Nf4Vectors.values(f, "reciprocal_approx_f32.input");
            int differ = 0;
            for (int b = 0; b < in.length / 32; b++) {
                float a = Nf4Codec.absmax(in, b * 32, 32);
                assertNotEquals(1f / a, CudaFastMath.rcp(a), "block " + b + "'s absmax is one the approximation rounds the other way");
                for (int i = b * 32; i < b * 32 + 32; i++) {
                    if (Nf4Codec.encode(CudaFastMath.mul(in[i], CudaFastMath.rcp(a))) != Nf4Codec.encode(in[i] * (1f / a))) {
                        differ++;
                    }
                }
            }
            assertTrue(differ >= 4, "only " + differ + " elements tell the two apart");
        }
    }

    @Test
    void roundTripErrorStaysWithinTheNf4Bound() throws Exception {
        Random rnd = new Random(42);
        int n = 64 * 500 + 17;
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (rnd.nextGaussian() * Math.exp(rnd.nextGaussian()));
        }
        for (int bs : new int[] {32, 64, 4096}) {
            ByteArrayOutputStream packed = new ByteArrayOutputStream();
            Nf4Encoder enc = new Nf4Encoder(n, bs, b -> packed.write(b.array(), b.arrayOffset() + b.position(), b.remaining()), null, "w");
            enc.accept(x, 0, n);
            float[] absmax = enc.finish();
            byte[] codes = packed.toByteArray();
            double worst = 0;
            for (int i = 0; i < n; i++) {
                int c = Nf4Codec.codeAt(codes[i / 2], i);
                float a = absmax[i / bs];
                double err = Math.abs((double) x[i] - Nf4Codec.dequantize(c, a));
                // the nearest-value bound: half the gap to the neighbour on x's side, plus fp32 scaling error
                double lowGap = c > 0 ? Nf4Codec.value(c) - Nf4Codec.value(c - 1) : 0;
                double highGap = c < 15 ? Nf4Codec.value(c + 1) - Nf4Codec.value(c) : 0;
                double bound = a * (Math.max(lowGap, highGap) / 2 + 1e-6);
                assertTrue(err <= bound, "element " + i + " error " + err + " > " + bound);
                worst = Math.max(worst, err / a);
            }
            assertTrue(worst <= 0.152, "worst " + worst);
            assertEquals(worst, enc.maxErrorOverAbsmax(), 1e-9);
        }
    }

    @Test
    void staticBlockApiAgreesWithTheStream() throws Exception {
        float[] x = new float[200];
        Random rnd = new Random(3);
        for (int i = 0; i < x.length; i++) {
            x[i] = (float) rnd.nextGaussian();
        }
        byte[] codes = new byte[200];
        float[] absmax = new float[4];
        for (int b = 0; b < 4; b++) {
            int len = Math.min(64, 200 - b * 64);
            absmax[b] = Nf4Codec.quantizeBlock(x, b * 64, len, codes, b * 64);
        }
        byte[] packed = new byte[100];
        Nf4Codec.pack(codes, 0, 200, packed, 0);
        List<Byte> streamed = new ArrayList<>();
        Nf4Encoder enc = new Nf4Encoder(200, 64, b -> {
            while (b.hasRemaining()) {
                streamed.add(b.get());
            }
        }, null, "w");
        enc.accept(ByteBuffer.wrap(floatsLe(x)).order(java.nio.ByteOrder.LITTLE_ENDIAN), FloatFormat.F32, 200);
        assertArrayEquals(absmax, enc.finish());
        for (int i = 0; i < 100; i++) {
            assertEquals(packed[i], (byte) streamed.get(i));
        }
    }

    @Test
    void blocksEncodedApartMustCoverWholeBlocks() {
        ByteBuffer src = ByteBuffer.allocate(4 * 200).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        byte[] packed = new byte[100];
        float[] absmax = new float[4];
        // a range starting inside a block, or ending inside one before the end, would split it between two encoders
        assertThrows(IllegalArgumentException.class, () -> Nf4Encoder.encodeBlocks(src, FloatFormat.F32, 200, 64, 32, 64, packed, absmax, null, "w"));
        assertThrows(IllegalArgumentException.class, () -> Nf4Encoder.encodeBlocks(src, FloatFormat.F32, 200, 64, 0, 100, packed, absmax, null, "w"));
        assertDoesNotThrow(() -> Nf4Encoder.encodeBlocks(src, FloatFormat.F32, 200, 64, 128, 72, packed, absmax, null, "w"));
    }

    @Test
    void nonFiniteWeightIsAnInputError() {
        Nf4Encoder enc = new Nf4Encoder(64, 64, b -> { }, null, "layer.weight");
        float[] x = new float[64];
        x[10] = Float.NaN;
        QuantException e = org.junit.jupiter.api.Assertions.assertThrows(QuantException.class, () -> enc.accept(x, 0, 64));
        assertEquals(QuantException.Reason.NON_FINITE, e.reason());
        assertTrue(e.getMessage().contains("layer.weight") && e.getMessage().contains("element 10"), e.getMessage());
    }

    @Test
    void offsetIsTorchsFp32MeanNotTheCorrectlyRoundedMean() {
        // the absmax of bitsandbytes' zero-block vector: bitsandbytes 0.50.1 wrote 0.1119791716337204 (torch's
        // fl32(sum · fl32(1/6))), while the correctly rounded mean is the fp32 below it
        float[] absmax = {0.248046875f, 0f, 0.015625f, 0f, 0.21484375f, 0.193359375f};
        assertEquals(0.1119791716337204f, DoubleQuant.offset(absmax, 6));
        assertEquals(Math.nextDown(0.1119791716337204f), new java.math.BigDecimal("0.671875").divide(java.math.BigDecimal.valueOf(6),
                java.math.MathContext.DECIMAL128).floatValue(), "the correctly rounded mean is one ulp lower");
        assertEquals(5.0f * (1f / 3f), DoubleQuant.offset(new float[] {1, 2, 2}, 3));
        // 2 + 2^-23 rounds once to fp32 (a tie between 2 and 2 + 2^-22: even wins), then times 0.5
        assertEquals(1.0f, DoubleQuant.offset(new float[] {1.0f, Math.nextUp(1.0f)}, 2));
        // a sum beyond fp32 precision: 2^24 + 1 rounds to 2^24 (tie to even), times 0.5
        assertEquals(8388608f, DoubleQuant.offset(new float[] {16777216f, 1f}, 2));
        // subnormal sums are not flushed (torch's mean is not fast math): 2 quanta times 0.5
        assertEquals(Float.MIN_VALUE, DoubleQuant.offset(new float[] {Float.MIN_VALUE, Float.MIN_VALUE}, 2));
        // 3 quanta times 0.5 = 1.5 quanta: a tie, to the even count of quanta (2)
        assertEquals(2 * Float.MIN_VALUE, DoubleQuant.offset(new float[] {Float.MIN_VALUE, 2 * Float.MIN_VALUE}, 2));
    }

    private static Float[] box(float[] v) {
        Float[] out = new Float[v.length];
        for (int i = 0; i < v.length; i++) {
            out[i] = v[i];
        }
        return out;
    }

    private static byte[] floatsLe(float[] v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(java.nio.ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putFloat(x);
        }
        return b.array();
    }
}
