package org.loramerge.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.loramerge.cli.Main;
import org.loramerge.format.FloatFormat;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.FixtureCases;

/** The golden combination cases of scripts/fixtures/make_combine_fixtures.py (src/test/resources/combine), and helpers to run them. */
final class CombineCases {
    static final Path ROOT = Paths.get("src/test/resources/combine");

    private CombineCases() {
    }

    /** The case folders under {@code kind} ("peft" or "dense"), sorted. */
    static Stream<String> cases(String kind) throws IOException {
        return FixtureCases.names(ROOT.resolve(kind));
    }

    static JsonNode caseJson(String kind, String name) throws IOException {
        return new ObjectMapper().readTree(ROOT.resolve(kind).resolve(name).resolve("case.json").toFile());
    }

    static Path model(JsonNode c) {
        return ROOT.resolve("models").resolve(c.get("model").asText());
    }

    /** --adapter A1 --adapter A2 ... of a case. */
    static List<String> adapterArgs(JsonNode c) {
        List<String> args = new ArrayList<>();
        for (JsonNode a : c.get("adapters")) {
            args.add("--adapter");
            args.add(ROOT.resolve("adapters").resolve(a.asText()).toString());
        }
        return args;
    }

    /** --weights w1,w2,... of a case. */
    static List<String> weightArgs(JsonNode c) {
        List<String> w = new ArrayList<>();
        for (JsonNode x : c.get("weights")) {
            w.add(Double.toString(x.asDouble()));
        }
        return List.of("--weights", String.join(",", w));
    }

    /** Runs the command line with stderr captured; returns {exit code, stderr}. */
    static Object[] run(List<String> args) {
        PrintStream oldErr = System.err;
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        try (PrintStream capture = new PrintStream(err, true, StandardCharsets.UTF_8)) {
            System.setErr(capture);
            int code = Main.run(args.toArray(new String[0]));
            capture.flush();
            return new Object[] {code, err.toString(StandardCharsets.UTF_8)};
        } finally {
            System.setErr(oldErr);
        }
    }

    /** The raw bits of every element of a tensor. */
    static int[] bits(SafetensorsFile f, TensorInfo t) throws IOException {
        FloatFormat fmt = FloatFormat.of(t.dtype());
        int n = Math.toIntExact(t.numElements());
        int[] out = new int[n];
        try (MappedRegion r = f.map(t, 0, t.sizeInBytes())) {
            for (int i = 0; i < n; i++) {
                out[i] = fmt.bitsAt(r.bytes(), i);
            }
        }
        return out;
    }

    /** The values of every element of a tensor, exactly. */
    static double[] values(SafetensorsFile f, TensorInfo t) throws IOException {
        FloatFormat fmt = FloatFormat.of(t.dtype());
        int[] b = bits(f, t);
        double[] out = new double[b.length];
        for (int i = 0; i < b.length; i++) {
            out[i] = fmt.decode(b[i]);
        }
        return out;
    }
}
