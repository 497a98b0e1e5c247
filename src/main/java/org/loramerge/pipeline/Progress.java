package org.loramerge.pipeline;

import java.io.PrintStream;
import java.util.Locale;

/**
 * A progress line on stderr for long merges: tensors, bytes, throughput and time left. On a
 * terminal the line is redrawn in place; otherwise a line is printed every few seconds.
 */
public final class Progress {
    private final PrintStream err;
    private final boolean enabled;
    private final boolean terminal;
    private final long totalBytes;
    private final int totalTensors;
    private final String verb;
    private final long start = System.nanoTime();
    private long lastPrint = start; // the first line after one interval: short merges print none
    private long bytesDone;
    private int tensorsDone;
    private boolean printed;

    public Progress(PrintStream err, boolean enabled, long totalBytes, int totalTensors) {
        this(err, enabled, totalBytes, totalTensors, "merging");
    }

    /** A progress line that starts with {@code verb} ("merging", "extracting"). */
    public Progress(PrintStream err, boolean enabled, long totalBytes, int totalTensors, String verb) {
        this.verb = verb;
        this.err = err;
        this.enabled = enabled;
        this.terminal = System.console() != null;
        this.totalBytes = totalBytes;
        this.totalTensors = totalTensors;
    }

    public static Progress silent() {
        return new Progress(System.err, false, 0, 0);
    }

    public void addBytes(long n) {
        bytesDone += n;
        maybePrint();
    }

    public void tensorDone() {
        tensorsDone++;
        maybePrint();
    }

    private void maybePrint() {
        if (!enabled) {
            return;
        }
        long now = System.nanoTime();
        long interval = terminal ? 250_000_000L : 5_000_000_000L;
        if (now - lastPrint < interval) {
            return;
        }
        lastPrint = now;
        err.print(line(now) + (terminal ? "\r" : "\n"));
        err.flush();
        printed = true;
    }

    String line(long now) {
        double secs = (now - start) / 1e9;
        double rate = secs > 0 ? bytesDone / secs : 0;
        String eta = rate > 0 ? String.format(Locale.ROOT, "%.0fs", (totalBytes - bytesDone) / rate) : "?";
        return String.format(Locale.ROOT, "%s: %d/%d tensors, %s / %s, %s/s, ETA %s   ", verb,
                tensorsDone, totalTensors, bytes(bytesDone), bytes(totalBytes), bytes((long) rate), eta);
    }

    /** Ends the progress line. */
    public void finish() {
        if (enabled && printed && terminal) {
            err.print(line(System.nanoTime()) + "\n");
            err.flush();
        }
    }

    public static String bytes(long n) {
        if (n >= 1_000_000_000L) {
            return String.format(Locale.ROOT, "%.2f GB", n / 1e9);
        }
        if (n >= 1_000_000L) {
            return String.format(Locale.ROOT, "%.1f MB", n / 1e6);
        }
        return n + " B";
    }
}
