package org.loramerge.testutil;

import java.io.IOException;
import java.nio.file.Path;
import org.loramerge.adapter.AdapterException;
import org.loramerge.errors.UsageException;
import org.loramerge.format.SafetensorsException;
import org.loramerge.quant.QuantException;

/**
 * The fuzz targets' oracle: whatever the input, loramerge either accepts it or refuses it with one
 * of the typed bad-input exceptions (exit 3, or 2 for a usage error) whose message names the file
 * or folder it is about. Anything else (a runtime exception, an error, a refusal that names no file)
 * is a bug, and is thrown on as an {@link AssertionError} for the fuzzer to report.
 */
public final class FuzzOracle {
    /** What a fuzz target does with its input. */
    @FunctionalInterface
    public interface Action {
        void run() throws Exception;
    }

    private FuzzOracle() {
    }

    /**
     * Runs {@code action}; passes when it returns, or when it throws a typed bad-input exception
     * whose message names a path under one of {@code roots} (the folders the input was written to).
     */
    public static void acceptsOrRefuses(Action action, Path... roots) {
        try {
            action.run();
        } catch (SafetensorsException | AdapterException | QuantException | UsageException e) {
            requireNamed(e, roots);
        } catch (IOException e) {
            // an IOException stands for bad input only when it says which file or folder is wrong
            requireNamed(e, roots);
        } catch (Exception e) {
            throw new AssertionError("not a typed bad-input error: " + e, e);
        }
    }

    private static void requireNamed(Exception e, Path... roots) {
        String message = e.getMessage();
        if (message == null || message.isBlank()) {
            throw new AssertionError("a refusal without a message: " + e, e);
        }
        for (Path root : roots) {
            if (message.contains(root.toString())) {
                return;
            }
        }
        throw new AssertionError("a refusal that names no input file: " + e, e);
    }
}
