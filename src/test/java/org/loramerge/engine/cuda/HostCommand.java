package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

/** A command of the host-compiled kernel tests (g++, the harness it built), run in a folder with its output captured. */
final class HostCommand {
    /** Its exit status (-1: it could not start, -2: it ran past its limit) and its stdout and stderr together. */
    record Result(int exit, String output) {
    }

    private HostCommand() {
    }

    static Result run(Path dir, Duration limit, String... command) throws InterruptedException, IOException {
        Process p;
        try {
            p = new ProcessBuilder(List.of(command)).directory(dir.toFile()).redirectErrorStream(true).start();
        } catch (IOException e) {
            return new Result(-1, e.getMessage());
        }
        String output = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        if (!p.waitFor(limit.toMillis(), TimeUnit.MILLISECONDS)) {
            p.destroyForcibly();
            return new Result(-2, "timed out: " + output);
        }
        return new Result(p.exitValue(), output);
    }
}
