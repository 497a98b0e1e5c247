package org.loramerge.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.testutil.TinyModels;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * {@code merge --to} on the command line: a 4-bit base needs it and the message explains the
 * choice; what cannot be merged (FP4) is refused; on a 16-bit base {@code --to nf4} is refused
 * and {@code --to bf16} means {@code --dtype bf16}; {@code --dtype} still sets the tensors that
 * are not quantized; {@code verify --to} checks a QLoRA merge, the 4-bit codes included.
 */
class QloraCliTest {
    private static final Path QLORA = Paths.get("src/test/resources/qlora");
    private static final Path FIXTURES = Paths.get("src/test/resources/fixtures");
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final String Q_PROJ = "model.layers.0.self_attn.q_proj.weight";

    @TempDir
    Path dir;

    /** The exit code and what was printed: stderr, then stdout (verify's report). */
    private record Result(int code, String err) {
    }

    private static Result run(String... args) {
        PrintStream oldErr = System.err;
        PrintStream oldOut = System.out;
        ByteArrayOutputStream err = new ByteArrayOutputStream();
        ByteArrayOutputStream stdout = new ByteArrayOutputStream();
        try (PrintStream capture = new PrintStream(err, true, StandardCharsets.UTF_8);
             PrintStream out = new PrintStream(stdout, true, StandardCharsets.UTF_8)) {
            System.setErr(capture);
            System.setOut(out);
            int code = Main.run(args);
            return new Result(code, err.toString(StandardCharsets.UTF_8) + stdout.toString(StandardCharsets.UTF_8));
        } finally {
            System.setErr(oldErr);
            System.setOut(oldOut);
        }
    }

    private static Result merge(Path caseDir, Path out, String... extra) {
        return merge(caseDir.resolve("base"), caseDir.resolve("adapter"), out, extra);
    }

    private static Result merge(Path base, Path adapter, Path out, String... extra) {
        List<String> args = new ArrayList<>(List.of("merge", "--base", base.toString(), "--adapter", adapter.toString(),
                "--out", out.toString(), "--device", "cpu"));
        args.addAll(Arrays.asList(extra));
        return run(args.toArray(new String[0]));
    }

    @Test
    void aFourBitBaseNeedsToAndTheMessageExplainsTheChoice() {
        Path out = dir.resolve("out");
        Result r = merge(QLORA.resolve("dq_bs64"), out, "--quiet");
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
        assertTrue(r.err().contains("--to bf16") && r.err().contains("--to nf4") && r.err().contains("bitsandbytes 4-bit"), r.err());
        assertTrue(r.err().contains("rounded away") && r.err().contains("quantization_config"), r.err());
        assertFalse(Files.exists(out));
    }

    @Test
    void aConfigNamingFp4OverNf4WeightsWarnsAndAStateNamedForAnotherTypeIsRefused() throws Exception {
        // config.json says fp4
        Path byConfig = copyBase(QLORA.resolve("dq_bs64/base"), dir.resolve("fp4-config"));
        ObjectNode config = (ObjectNode) JSON.readTree(byConfig.resolve("config.json").toFile());
        ((ObjectNode) config.get("quantization_config")).put("bnb_4bit_quant_type", "fp4");
        Files.writeString(byConfig.resolve("config.json"), config.toString());
        Result r = merge(byConfig, QLORA.resolve("dq_bs64/adapter"), dir.resolve("out1"), "--to", "bf16");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.err().contains("bnb_4bit_quant_type is \"fp4\"") && r.err().contains("fix config.json"), r.err());
        // a quant state of an FP4 weight
        Path byTensor = dir.resolve("fp4-tensor");
        Files.createDirectories(byTensor);
        List<TinyModels.Tensor> tensors = new ArrayList<>();
        try (SafetensorsFile f = SafetensorsFile.open(QLORA.resolve("dq_bs64/base/model.safetensors"))) {
            for (TensorInfo t : f.tensors()) {
                byte[] data = new byte[(int) t.sizeInBytes()];
                f.readAll(t).get(data);
                tensors.add(new TinyModels.Tensor(t.name().replace("bitsandbytes__nf4", "bitsandbytes__fp4"), t.dtype(), t.shape(), data));
            }
        }
        TinyModels.writeSafetensors(byTensor.resolve("model.safetensors"), tensors);
        Files.copy(QLORA.resolve("dq_bs64/base/config.json"), byTensor.resolve("config.json"));
        Path out = dir.resolve("out2");
        r = merge(byTensor, QLORA.resolve("dq_bs64/adapter"), out, "--to", "nf4", "--quiet");
        assertEquals(ExitCodes.BAD_INPUT, r.code(), r.err());
        assertTrue(r.err().contains("quant_type is \"nf4\"") && r.err().contains("bitsandbytes__fp4"), r.err());
        assertFalse(Files.exists(out));
    }

    @Test
    void toOnASixteenBitBase() throws Exception {
        Path fixture = FIXTURES.resolve("linear_f32");
        // nf4 asks to requantize a base that is not quantized
        Result r = merge(fixture, dir.resolve("nf4"), "--to", "nf4", "--quiet");
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
        assertTrue(r.err().contains("no quantized weights") && r.err().contains("loramerge quantize"), r.err());
        // bf16 is --dtype bf16
        assertEquals(0, merge(fixture, dir.resolve("to"), "--to", "bf16", "--quiet").code());
        assertEquals(0, merge(fixture, dir.resolve("dtype"), "--dtype", "bf16", "--quiet").code());
        assertEquals(TinyModels.hashTree(dir.resolve("dtype")), TinyModels.hashTree(dir.resolve("to")));
        // and may not contradict it
        r = merge(fixture, dir.resolve("both"), "--to", "bf16", "--dtype", "f32", "--quiet");
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
        assertTrue(r.err().contains("disagree"), r.err());
        r = merge(fixture, dir.resolve("bad"), "--to", "int4", "--quiet");
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
    }

    @Test
    void dtypeSetsTheTensorsThatAreNotQuantized() throws Exception {
        Path out = dir.resolve("out");
        Result r = merge(QLORA.resolve("plain_bs32"), out, "--to", "bf16", "--dtype", "f32", "--quiet");
        assertEquals(0, r.code(), r.err());
        try (Checkpoint c = Checkpoint.open(out)) {
            assertEquals(DType.BF16, c.tensor(Q_PROJ).dtype(), "a dequantized weight follows --to");
            assertEquals(DType.BF16, c.tensor("model.layers.0.self_attn.k_proj.weight").dtype());
            assertEquals(DType.F32, c.tensor("model.norm.weight").dtype(), "the rest follows --dtype");
            assertEquals(DType.F32, c.tensor("model.embed_tokens.weight").dtype());
            assertEquals(DType.F32, c.tensor("lm_head.weight").dtype());
        }
        assertEquals("float32", JSON.readTree(out.resolve("config.json").toFile()).get("dtype").asText());
    }

    @Test
    void verifyChecksAQloraMergeCodesIncluded() throws Exception {
        Path caseDir = QLORA.resolve("dq_bs64");
        Path out = dir.resolve("out");
        assertEquals(0, merge(caseDir, out, "--to", "nf4", "--quiet").code());
        Path dense = dir.resolve("dense");
        assertEquals(0, merge(caseDir, dense, "--to", "bf16", "--quiet").code());
        List<String> verify = List.of("verify", "--base", caseDir.resolve("base").toString(), "--adapter", caseDir.resolve("adapter").toString());
        Result r = run(Stream.concat(verify.stream(), Stream.of("--merged", dense.toString(), "--to", "bf16")).toArray(String[]::new));
        assertEquals(0, r.code(), r.err());
        r = run(Stream.concat(verify.stream(), Stream.of("--merged", out.toString(), "--to", "nf4")).toArray(String[]::new));
        assertEquals(0, r.code(), r.err());
        r = run(Stream.concat(verify.stream(), Stream.of("--merged", out.toString())).toArray(String[]::new));
        assertEquals(ExitCodes.USAGE, r.code(), r.err());
        // one 4-bit code of a requantized weight changed: verify must see it (it samples 16 blocks, so change the first)
        long at;
        try (SafetensorsFile f = SafetensorsFile.open(out.resolve("model.safetensors"))) {
            at = f.tensor(Q_PROJ).dataStart();
        }
        flip(out.resolve("model.safetensors"), at);
        r = run(Stream.concat(verify.stream(), Stream.of("--merged", out.toString(), "--to", "nf4")).toArray(String[]::new));
        assertEquals(ExitCodes.VERIFY_FAILED, r.code(), r.err());
        assertTrue(r.err().contains(Q_PROJ) && r.err().contains("4-bit codes"), r.err());
    }

    private static void flip(Path file, long position) throws IOException {
        try (RandomAccessFile raf = new RandomAccessFile(file.toFile(), "rw")) {
            raf.seek(position);
            int b = raf.read();
            raf.seek(position);
            raf.write(b ^ 0x11);
        }
    }

    private static Path copyBase(Path from, Path to) throws IOException {
        Files.createDirectories(to);
        try (Stream<Path> s = Files.list(from)) {
            for (Path p : (Iterable<Path>) s::iterator) {
                Files.copy(p, to.resolve(p.getFileName()));
            }
        }
        return to;
    }
}
