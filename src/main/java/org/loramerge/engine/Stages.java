package org.loramerge.engine;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.LongAdder;

/**
 * Where one merge's time goes, stage by stage: seconds, bytes and events, added from any thread
 * (a few {@link System#nanoTime} calls per block into {@link LongAdder}s). Three clocks: the wall
 * time of the steps the run takes one after the other ({@link Clock#WALL}); the time threads spent
 * in a stage, summed over the threads that ran it at once ({@link Clock#THREADS}: 8 workers each
 * writing for 2 s make 16 s); and the time the GPU spent on a worker's stream, from CUDA events
 * ({@link Clock#DEVICE}, summed over streams). Reported under {@code "stages"} of
 * {@code merge --json} and by {@code merge --stats}.
 */
public final class Stages {
    /** How a stage's seconds add up. */
    public enum Clock {
        WALL, THREADS, DEVICE
    }

    /** The stages, in the order a block meets them. */
    public enum Stage {
        /** Opening the base and adapters and making the plan (from the call to the plan). */
        PLAN(Clock.WALL),
        /** Waiting for the engine to finish starting (CUDA context, kernels) once the plan is made. */
        ENGINE_START(Clock.WALL),
        /** Streaming the tensors into the shards, from the first tensor to the last shard finished. */
        STREAM(Clock.WALL),
        /**
         * Within {@link #STREAM}: the wait, after the last block, for the shards' ends (each shard's background flush
         * awaited, late tensors and header written, the file forced to disk), which run in the background as each
         * shard's last block is written.
         */
        SHARD_FINISH(Clock.WALL),
        /** After the shards: the index, config.json, the carried files, the verification, the model card. */
        FINISH(Clock.WALL),
        /** Making the output durable and visible (fsync, rename). */
        COMMIT(Clock.WALL),
        /** A tensor's factors made (U and Vᵀ in fp64) and handed to the engine (uploaded, on a GPU), on the writing thread. */
        FACTORS(Clock.THREADS),
        /** A worker waiting for a free output block. */
        BUFFER_WAIT(Clock.THREADS),
        /** Source rows made readable: a mapping of the base (its page faults come later, where the bytes are first read), or a quantized block decoded. */
        READ(Clock.THREADS),
        /** The engine's whole work on a block (the stages below are parts of it on the GPU; on the CPU it is the merge itself). */
        MERGE(Clock.THREADS),
        /**
         * GPU: W copied from the mapped base into the worker's page-locked staging buffer, page faults of the mapping
         * included (rows read into a page-locked block, {@code -Dloramerge.read=pread}, go up from there: no copy).
         */
        STAGE_IN(Clock.THREADS),
        /** GPU: a worker waiting for its stream (upload, compute, download). */
        DEVICE_WAIT(Clock.THREADS),
        /** GPU: elements the device left undecided settled on the host, and blocks the CPU engine merged instead. */
        HOST_SETTLE(Clock.THREADS),
        /** GPU: host-to-device copy of W (and an NF4 block's dequantization), device time. */
        UPLOAD(Clock.DEVICE),
        /** GPU: P = s·U·Vᵀ, add, round and exact settling, device time. */
        COMPUTE(Clock.DEVICE),
        /** GPU: device-to-host copy of the result into the page-locked output block, device time. */
        DOWNLOAD(Clock.DEVICE),
        /** A block's bytes written at their place in the shard (a byte-copied tensor's page faults on the base included). */
        WRITE(Clock.THREADS),
        /** The writing thread waiting for the oldest block in flight to be done (the in-order hand-over). */
        IN_ORDER_WAIT(Clock.THREADS);

        private final Clock clock;

        Stage(Clock clock) {
            this.clock = clock;
        }

        public Clock clock() {
            return clock;
        }

        /** The name in reports: snake_case. */
        public String key() {
            return name().toLowerCase(Locale.ROOT);
        }
    }

    /**
     * One stage's totals.
     *
     * @param clock   how its seconds add up ({@link Clock}), lower case
     * @param seconds time spent in it
     * @param bytes   bytes it moved (0 where it moves none)
     * @param events  times it was entered (blocks, tensors)
     */
    public record Total(String clock, double seconds, long bytes, long events) {
    }

    /** Accounting that keeps nothing, for merges nobody reports on (tests that drive an engine directly). */
    public static final Stages NONE = new Stages(false);

    private final boolean enabled;
    private final LongAdder[] nanos = adders();
    private final LongAdder[] bytes = adders();
    private final LongAdder[] events = adders();

    private Stages(boolean enabled) {
        this.enabled = enabled;
    }

    /** Empty accounting for one merge. */
    public Stages() {
        this(true);
    }

    private static LongAdder[] adders() {
        LongAdder[] a = new LongAdder[Stage.values().length];
        for (int i = 0; i < a.length; i++) {
            a[i] = new LongAdder();
        }
        return a;
    }

    /** Whether this accounting keeps anything (not {@link #NONE}): costly measurements may be skipped otherwise. */
    public boolean enabled() {
        return enabled;
    }

    /** Adds one event of {@code stage} that took {@code nanoseconds} and moved {@code byteCount} bytes. */
    public void add(Stage stage, long nanoseconds, long byteCount) {
        if (!enabled) {
            return;
        }
        int i = stage.ordinal();
        nanos[i].add(nanoseconds);
        bytes[i].add(byteCount);
        events[i].increment();
    }

    /** {@link #add} of the time since {@code startNanos} (a {@link System#nanoTime}); returns the time now, where the next stage starts. */
    public long since(Stage stage, long startNanos, long byteCount) {
        long now = System.nanoTime();
        add(stage, now - startNanos, byteCount);
        return now;
    }

    /** The stages entered at least once, in {@link Stage} order, by their {@link Stage#key}. */
    public Map<String, Total> totals() {
        Map<String, Total> out = new LinkedHashMap<>();
        for (Stage s : Stage.values()) {
            int i = s.ordinal();
            long n = events[i].sum();
            if (n > 0) {
                out.put(s.key(), new Total(s.clock().name().toLowerCase(Locale.ROOT), nanos[i].sum() / 1e9, bytes[i].sum(), n));
            }
        }
        return out;
    }

    /**
     * The totals on one line, {@code "read 1.20 s 13.5 GB (11.2 GB/s) | ..."}: per stage its seconds
     * (thread and device stages summed over threads and streams, marked {@code thr} and {@code dev}),
     * and where it moves bytes, those and its rate per second of its own time.
     */
    public static String line(Map<String, Total> totals) {
        StringBuilder b = new StringBuilder();
        for (Map.Entry<String, Total> e : totals.entrySet()) {
            Total t = e.getValue();
            if (b.length() > 0) {
                b.append(" | ");
            }
            b.append(e.getKey()).append(' ').append(String.format(Locale.ROOT, "%.2f s", t.seconds()));
            if (!t.clock().equals("wall")) {
                b.append(' ').append(t.clock().equals("threads") ? "thr" : "dev");
            }
            if (t.bytes() > 0) {
                b.append(String.format(Locale.ROOT, " %.2f GB", t.bytes() / 1e9));
                if (t.seconds() > 0) {
                    b.append(String.format(Locale.ROOT, " (%.1f GB/s)", t.bytes() / 1e9 / t.seconds()));
                }
            }
        }
        return b.toString();
    }
}
