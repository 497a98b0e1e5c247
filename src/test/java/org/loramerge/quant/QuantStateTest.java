package org.loramerge.quant;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.loramerge.format.PythonFloat;
import org.loramerge.format.DType;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.quant.QuantException.Reason.*;

/** The quant state JSON: what bitsandbytes writes parses and re-serializes byte for byte; each malformation has its reason. */
class QuantStateTest {
    private static final Path FILE = Path.of("/models/m/model.safetensors");
    private static final String TENSOR = "model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4";
    private static final String PLAIN = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [11008, 4096]}";
    private static final String NESTED = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [4096, 4096], "
            + "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.0123456789}";

    private static QuantState parse(String json) throws QuantException {
        return QuantState.parse(json.getBytes(StandardCharsets.UTF_8), FILE, TENSOR);
    }

    private static QuantException.Reason reject(String json) {
        QuantException e = assertThrows(QuantException.class, () -> parse(json));
        assertTrue(e.getMessage().startsWith(FILE + ": tensor '" + TENSOR + "': "), e.getMessage());
        assertEquals(FILE, e.path());
        assertEquals(TENSOR, e.tensor());
        return e.reason();
    }

    @Test
    void parsesWhatBitsandbytesWritesAndWritesItBack() throws Exception {
        QuantState p = parse(PLAIN);
        assertEquals(64, p.blocksize());
        assertEquals(DType.BF16, p.dtype());
        assertArrayEquals(new long[] {11008, 4096}, p.shape());
        assertNull(p.nested());
        assertEquals(11008L * 4096 / 64, p.numBlocks());
        assertEquals(PLAIN, new String(p.toJson(), StandardCharsets.UTF_8));

        QuantState n = parse(NESTED);
        assertEquals(DType.F16, n.dtype());
        assertEquals(256, n.nested().blocksize());
        assertEquals((float) 0.0123456789, n.nested().offset());
        // the offset is an fp32 value (bitsandbytes: torch.tensor(float(...))): written back as repr(float(fp32))
        assertTrue(new String(n.toJson(), StandardCharsets.UTF_8).endsWith("\"nested_offset\": " + PythonFloat.repr((float) 0.0123456789) + "}"));
        assertEquals(n, QuantState.parse(n.toJson(), FILE, TENSOR));
    }

    @Test
    void notJson() {
        assertEquals(QUANT_STATE_NOT_JSON, reject("{\"quant_type\": \"nf4\", "));
        assertEquals(QUANT_STATE_NOT_JSON, reject("[1, 2]"));
        assertEquals(QUANT_STATE_NOT_JSON, reject(""));
        assertEquals(QUANT_STATE_NOT_JSON, reject(PLAIN.replace("}", ", \"blocksize\": 64}"))); // a key twice
        QuantException e = assertThrows(QuantException.class, () -> QuantState.parse(new byte[] {'{', (byte) 0xC3, '}'}, FILE, TENSOR));
        assertEquals(QUANT_STATE_NOT_JSON, e.reason());
    }

    @Test
    void missingField() {
        for (String f : new String[] {"\"quant_type\": \"nf4\", ", "\"blocksize\": 64, ", "\"dtype\": \"bfloat16\", "}) {
            assertEquals(MISSING_FIELD, reject(PLAIN.replace(f, "")), f);
        }
        assertEquals(MISSING_FIELD, reject(PLAIN.replace(", \"shape\": [11008, 4096]", "")));
    }

    @Test
    void unknownField() {
        assertEquals(UNKNOWN_FIELD, reject(PLAIN.replace("}", ", \"quant_storage\": \"uint8\"}")));
        // the tensors of the state never appear inside the JSON
        assertEquals(UNKNOWN_FIELD, reject(PLAIN.replace("}", ", \"absmax\": [1.0]}")));
    }

    @Test
    void wrongFieldType() {
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("\"blocksize\": 64", "\"blocksize\": \"64\"")));
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("\"blocksize\": 64", "\"blocksize\": 64.5")));
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("\"nf4\"", "4")));
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("[11008, 4096]", "\"11008x4096\"")));
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("[11008, 4096]", "[11008, null]")));
        assertEquals(WRONG_FIELD_TYPE, reject(PLAIN.replace("[11008, 4096]", "null")));
        assertEquals(WRONG_FIELD_TYPE, reject(NESTED.replace("0.0123456789", "\"0.01\"")));
    }

    @Test
    void unsupportedQuantType() {
        assertEquals(UNSUPPORTED_QUANT_TYPE, reject(PLAIN.replace("nf4", "fp4")));
        assertEquals(UNSUPPORTED_QUANT_TYPE, reject(PLAIN.replace("nf4", "NF4")));
    }

    @Test
    void invalidBlocksize() {
        for (String bs : new String[] {"48", "16", "8192", "0", "-64"}) {
            assertEquals(INVALID_BLOCKSIZE, reject(PLAIN.replace("\"blocksize\": 64", "\"blocksize\": " + bs)), bs);
        }
    }

    @Test
    void unsupportedDtype() {
        for (String d : new String[] {"float64", "torch.bfloat16", "uint8", "bf16"}) {
            assertEquals(UNSUPPORTED_DTYPE, reject(PLAIN.replace("bfloat16", d)), d);
        }
    }

    @Test
    void invalidShape() {
        assertEquals(INVALID_SHAPE, reject(PLAIN.replace("[11008, 4096]", "[]")));
        assertEquals(INVALID_SHAPE, reject(PLAIN.replace("[11008, 4096]", "[0, 4096]")));
        assertEquals(INVALID_SHAPE, reject(PLAIN.replace("[11008, 4096]", "[-1, 4096]")));
        assertEquals(INVALID_SHAPE, reject(PLAIN.replace("[11008, 4096]", "[4294967296, 4294967296]")));
    }

    @Test
    void invalidNested() {
        assertEquals(INVALID_NESTED, reject(NESTED.replace(", \"nested_offset\": 0.0123456789", "")));
        assertEquals(INVALID_NESTED, reject(PLAIN.replace("}", ", \"nested_blocksize\": 256}")));
        assertEquals(INVALID_NESTED, reject(NESTED.replace("\"nested_dtype\": \"float32\"", "\"nested_dtype\": \"float16\"")));
        assertEquals(INVALID_NESTED, reject(NESTED.replace("\"nested_blocksize\": 256", "\"nested_blocksize\": 100")));
        assertEquals(INVALID_NESTED, reject(NESTED.replace("0.0123456789", "NaN")));
        assertEquals(INVALID_NESTED, reject(NESTED.replace("0.0123456789", "1e39")));
    }

    @Test
    void theLongestJsonBoundsEveryOffsetsJson() throws Exception {
        QuantState small = QuantState.of(64, DType.BF16, new long[] {4096, 11008}, new QuantState.Nested(256, 0.5f));
        int reserved = small.maxJsonLength();
        int longest = 0;
        for (float offset : new float[] {0f, -Float.MIN_VALUE, -Float.MIN_NORMAL, -Float.MAX_VALUE, (float) -1.2345678e-30, 0.012345679f,
                Math.nextDown(1e16f), -Math.nextUp(1e-5f), 123456.79f, -1.17549435e-38f, -3.4028235e38f}) {
            QuantState s = QuantState.of(64, DType.BF16, new long[] {4096, 11008}, new QuantState.Nested(256, offset));
            assertEquals(reserved, s.maxJsonLength(), "the bound does not depend on the offset");
            byte[] json = s.toJson();
            assertTrue(json.length <= reserved, new String(json, java.nio.charset.StandardCharsets.UTF_8));
            longest = Math.max(longest, json.length);
            assertEquals(s, QuantState.parse(json, FILE, TENSOR));
        }
        assertTrue(reserved - longest <= 1, "the bound is tight: the longest JSON has " + longest + " of " + reserved + " bytes");
        QuantState plain = parse(PLAIN);
        assertEquals(plain.toJson().length, plain.maxJsonLength());
    }

    @Test
    void ofRejectsCallerBugs() {
        assertThrows(IllegalArgumentException.class, () -> QuantState.of(48, DType.BF16, new long[] {4, 4}, null));
        assertThrows(IllegalArgumentException.class, () -> QuantState.of(64, DType.U8, new long[] {4, 4}, null));
        assertThrows(IllegalArgumentException.class, () -> QuantState.of(64, DType.BF16, new long[] {}, null));
        assertFalse(QuantState.of(64, DType.F32, new long[] {3}, null).isDoubleQuant());
    }

    /** Python 3.11's json.dumps(float) for each double (bits), generated with the interpreter. */
    @ParameterizedTest
    @CsvSource({
            "3fb999999999999a, 0.1",
            "3ee4f8b588e368f1, 1e-05",
            "3eef75104d551d69, 1.5e-05",
            "3f1a36e2eb1c432d, 0.0001",
            "3f202e4b6ce5dc68, 0.00012345",
            "4341c37937e08000, 1e+16",
            "430c6bf526340000, 1000000000000000.0",
            "43118b54f22aeb00, 1234567890123456.0",
            "4345ee2a2eb5a5c4, 1.2345678901234568e+16",
            "36a0000000000000, 1.401298464324817e-45",
            "0000000000000001, 5e-324",
            "7fefffffffffffff, 1.7976931348623157e+308",
            "3fe0000000000000, 0.5",
            "4003800000000000, 2.4375",
            "3fbcaaaaa0000000, 0.1119791641831398",
            "bfe8000000000000, -0.75",
            "4059000000000000, 100.0",
            "4480f0cf064dd592, 1e+22",
            "3f1a36e2eb1c432c, 9.999999999999999e-05",
            "405edd2f1a9fbe77, 123.456",
            "37ccdc1400000000, 6.625857619759535e-40",
            "3870f95ce0000000, 7.981170961575192e-37",
            "38fec03660000000, 3.7014964829712907e-34",
            "3a44a500a0000000, 5.21141476252874e-28",
            "3b78e32fc0000000, 3.2938262319666413e-22",
            "3cd1f10280000000, 9.959502332275525e-16",
            "3d67386720000000, 6.599612891768081e-13",
            "3ea5da8040000000, 6.512856316476245e-07",
            "3f2150f3a0000000, 0.0001321122545050457",
            "3f42762420000000, 0.0005633999244309962",
            "3fe0a071a0000000, 0.5195854306221008",
            "4084d26de0000000, 666.3036499023438",
            "4120b2e420000000, 547186.0625",
            "419a5f6180000000, 110614624.0",
            "42f896e800000000, 432582663602176.0",
            "43a7829a20000000, 8.470429360371794e+17",
            "44327a18c0000000, 3.408393863050727e+20",
            "46bb764400000000, 5.5699502745594614e+32",
            "47dcd666c0000000, 1.533264777091635e+38",
            "0000000000000000, 0.0",
            "8000000000000000, -0.0",
    })
    void pythonFloatRepr(String bits, String python) {
        assertEquals(python, PythonFloat.repr(Double.longBitsToDouble(Long.parseUnsignedLong(bits, 16))));
    }
}
