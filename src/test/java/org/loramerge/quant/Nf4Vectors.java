package org.loramerge.quant;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

/**
 * The NF4 test vectors of src/test/resources/nf4, made by scripts/fixtures/nf4_reference.py vectors: one
 * complete NF4 tensor group per case ({@code <case>.weight...}) beside its input
 * ({@code <case>.input}) and the reference's dequantization ({@code <case>.dequant},
 * {@code <case>.dequant_f32}, {@code <case>.absmax_decoded}), described by index.json. The same
 * inputs quantized and dequantized by bitsandbytes itself on a GPU are in src/test/resources/bnb/vectors
 * (scripts/fixtures/make_bnb_fixtures.py), in the same layout: {@link #bitsandbytesCases()}.
 */
public final class Nf4Vectors {
    private static final ObjectMapper JSON = new ObjectMapper();

    /**
     * One case of index.json.
     *
     * @param orPackedPre047 its stored codes are packed as bitsandbytes before 0.47 packed blocksize &gt;= 1024
     *                       (each thread's second byte OR-ed with its first), not as quantizing writes them today
     * @param code           its quant_type's code book, NF4 or FP4
     * @param dir            the folder of its index.json and model.safetensors
     */
    public record Case(String name, DType dtype, long[] shape, int blocksize, boolean doubleQuant, long numElements, long numBlocks,
                List<String> tensors, String covers, boolean orPackedPre047, FourBitCode code, Path dir) {
        public boolean has(String suffix) {
            return tensors.contains(name + suffix);
        }

        /** The vectors file that holds this case. */
        public SafetensorsFile open() throws Exception {
            return SafetensorsFile.open(dir.resolve("model.safetensors"));
        }

        @Override
        public String toString() {
            return dir.equals(bitsandbytesDir()) ? "bitsandbytes " + name : name;
        }
    }

    private Nf4Vectors() {
    }

    /**
     * The vectors' folder: the test classpath's, or src/test/resources/nf4 of the working folder
     * when the tests run from a jar (the GPU machine runs them from the repository root).
     */
    public static Path dir() {
        return resourceDir("nf4");
    }

    /** The vectors bitsandbytes quantized and dequantized itself (src/test/resources/bnb/vectors), found as {@link #dir()}. */
    public static Path bitsandbytesDir() {
        return resourceDir("bnb/vectors");
    }

    private static Path resourceDir(String folder) {
        try {
            java.net.URI uri = Nf4Vectors.class.getResource("/" + folder + "/index.json").toURI();
            if ("file".equals(uri.getScheme())) {
                return Path.of(uri).getParent();
            }
        } catch (URISyntaxException e) {
            throw new IllegalStateException(e);
        }
        Path checkout = Path.of("src/test/resources", folder);
        if (!Files.isRegularFile(checkout.resolve("index.json"))) {
            throw new IllegalStateException("the NF4 vectors are inside a jar and " + checkout.toAbsolutePath()
                    + " does not hold them: run the tests from the repository root");
        }
        return checkout;
    }

    public static JsonNode index() {
        return index(dir());
    }

    private static JsonNode index(Path dir) {
        try {
            return JSON.readTree(Files.readAllBytes(dir.resolve("index.json")));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    public static List<Case> cases() {
        return cases(dir());
    }

    /** The cases of src/test/resources/bnb/vectors: every input above bitsandbytes writes, with its bytes and its dequantization. */
    public static List<Case> bitsandbytesCases() {
        return cases(bitsandbytesDir());
    }

    private static List<Case> cases(Path dir) {
        List<Case> out = new ArrayList<>();
        for (JsonNode c : index(dir).get("cases")) {
            long[] shape = new long[c.get("shape").size()];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = c.get("shape").get(i).asLong();
            }
            List<String> tensors = new ArrayList<>();
            c.get("tensors").forEach(t -> tensors.add(t.asText()));
            out.add(new Case(c.get("name").asText(), DType.valueOf(c.get("dtype").asText()), shape, c.get("blocksize").asInt(),
                    c.get("double_quant").asBoolean(), c.get("num_elements").asLong(), c.get("num_blocks").asLong(), tensors,
                    c.get("covers").asText(), c.path("or_packed_pre047").asBoolean(false),
                    FourBitCode.valueOf(c.path("quant_type").asText("nf4").toUpperCase(java.util.Locale.ROOT)), dir));
        }
        return out;
    }

    public static SafetensorsFile open() throws Exception {
        return SafetensorsFile.open(dir().resolve("model.safetensors"));
    }

    public static byte[] bytes(SafetensorsFile f, String name) throws IOException {
        TensorInfo t = f.tensor(name);
        if (t == null) {
            throw new IllegalArgumentException("no tensor " + name + " in the vectors");
        }
        ByteBuffer b = f.readAll(t);
        byte[] out = new byte[b.remaining()];
        b.get(out);
        return out;
    }

    public static float[] floats(SafetensorsFile f, String name) throws IOException {
        ByteBuffer b = f.readAll(f.tensor(name));
        float[] out = new float[b.remaining() / 4];
        b.asFloatBuffer().get(out);
        return out;
    }

    /** The values of a BF16/F16/F32 tensor as fp32 (exact). */
    public static float[] values(SafetensorsFile f, String name) throws IOException {
        TensorInfo t = f.tensor(name);
        FloatFormat fmt = FloatFormat.of(t.dtype());
        ByteBuffer b = f.readAll(t);
        float[] out = new float[(int) t.numElements()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) fmt.decode(fmt.bitsAt(b, i));
        }
        return out;
    }
}
