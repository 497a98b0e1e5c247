package org.loramerge.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.errors.ExitCode;
import org.loramerge.errors.UserException;
import org.loramerge.verify.Tolerance;

/** The library facade as a JVM user calls it: no command line, typed failures, immutable results. */
class LoraMergeApiTest {
    static final Path EXAMPLE = Path.of("examples/tiny-llama");
    static final Path FIXTURES = Path.of("src/test/resources/fixtures");

    @TempDir
    Path dir;

    @Test
    void aProgramMergesVerifiesInspectsAndQuantizesThroughTheFacade() throws Exception {
        Path out = dir.resolve("merged");
        MergeResult merged = LoraMerge.merge(EXAMPLE.resolve("base"), EXAMPLE.resolve("adapter"), out,
                MergeOptions.defaults().withDevice("cpu").withThreads(1).withVerifyRows(4));
        assertEquals(14, merged.tensorsMerged());
        assertEquals(14, merged.verifiedWorstUlp().size());
        assertTrue(Files.isRegularFile(out.resolve("model.safetensors")));

        VerifyResult strict = LoraMerge.verify(EXAMPLE.resolve("base"), EXAMPLE.resolve("adapter"), out, VerifyOptions.defaults());
        assertTrue(strict.passed(), strict.problems().toString());
        assertEquals(0.0, strict.worstUlp());
        assertEquals("ulp", strict.tolerance());

        Path f32 = FIXTURES.resolve("linear_f32");
        VerifyResult peft = LoraMerge.verify(f32.resolve("base"), f32.resolve("adapter"), f32.resolve("peft"),
                VerifyOptions.defaults().withRows(64).withTolerance(Tolerance.fp32Accumulation()));
        assertTrue(peft.passed(), peft.problems().toString());
        assertTrue(peft.worstUlp() > 1 && peft.worstBoundShare() < 1, "PEFT's F32 merge: many ulps, inside the fp32 bound");

        Inspection adapter = LoraMerge.inspect(EXAMPLE.resolve("adapter"));
        assertEquals("adapter", adapter.kind());
        assertEquals(8, adapter.r());
        assertEquals(14, adapter.modules().size());

        QuantizeResult q = LoraMerge.quantize(FIXTURES.resolve("linear_bf16/base"), dir.resolve("nf4"), QuantizeOptions.defaults());
        assertEquals(14, q.tensorsQuantized());
        assertEquals("bfloat16", q.computeDtype());
    }

    @Test
    void resultsCannotBeChangedByTheirReader() throws Exception {
        MergeResult r = LoraMerge.merge(EXAMPLE.resolve("base"), EXAMPLE.resolve("adapter"), dir.resolve("m"), MergeOptions.defaults().withDevice("cpu"));
        assertThrows(UnsupportedOperationException.class, () -> r.tensors().clear());
        assertThrows(UnsupportedOperationException.class, () -> r.notes().add("x"));
        assertThrows(UnsupportedOperationException.class, () -> r.tensors().get(0).shape().set(0, 1L));
        assertThrows(UnsupportedOperationException.class, () -> r.verifiedWorstUlp().put("x", 1.0));
    }

    @Test
    void failuresAreTypedWithTheirKindAndFileAndLeaveNothingBehind() {
        Path out = dir.resolve("runs/merged");
        UserException e = assertThrows(UserException.class, () -> LoraMerge.merge(dir.resolve("missing"), EXAMPLE.resolve("adapter"), out,
                MergeOptions.defaults().withDevice("cpu")));
        assertEquals(ExitCode.BAD_INPUT, e.exitCode());
        assertEquals(dir.resolve("missing"), e.file());
        assertFalse(Files.exists(dir.resolve("runs")), "nothing left behind");
        UserException usage = assertThrows(UserException.class, () -> LoraMerge.merge(EXAMPLE.resolve("base"), EXAMPLE.resolve("adapter"), out,
                MergeOptions.defaults().withDtype("int8")));
        assertEquals(ExitCode.USAGE, usage.exitCode());
    }
}
