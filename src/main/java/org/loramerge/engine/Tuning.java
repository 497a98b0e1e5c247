package org.loramerge.engine;

import java.util.Locale;
import org.loramerge.format.WriteMode;

/**
 * The streaming knobs, for measuring where a merge's time goes (scripts/bench/bench-tmpfs-gpu.sh
 * sweeps them): hidden Java system properties, unset in normal use, each defaulting to what the
 * code does without it. Set them with {@code LORAMERGE_JAVA_OPTS="-Dloramerge.streams=12"} or
 * {@code java -D... -jar}.
 *
 * <ul>
 *   <li>{@code loramerge.blockBytes}: output bytes per row block (default {@link Backend#DEFAULT_BLOCK_BYTES}, 8 MiB)
 *   <li>{@code loramerge.streams}: the GPU engine's worker threads, one stream each (default: half the CPU threads, 2 to 8;
 *       three quarters, up to 12, for an output written through mappings, as mixed writes into tmpfs are)
 *   <li>{@code loramerge.window}: blocks per worker thread and open shard that may wait for the in-order hand-over (default 2)
 *   <li>{@code loramerge.write}: how workers put their blocks into a shard ({@link WriteMode}): {@code pwrite}, a
 *       positional write; {@code mapped}, a copy into a memory mapping of the block's place; {@code mixed}, a positional
 *       write when no other worker is writing the shard and a mapped copy when one is; or {@code auto} (default), mixed
 *       into tmpfs and positional elsewhere
 *   <li>{@code loramerge.read}: how workers get a dense tensor's rows: {@code mapped}, a memory mapping of them,
 *       or {@code pread}, positional reads into a block buffer of the engine's (page-locked on a GPU); by default
 *       the engine's choice ({@link Backend#readsIntoBlockBuffers}: positional on a GPU, mapped on the CPU)
 *   <li>{@code loramerge.shards}: how many output shards a merge writes at once, its tensors interleaved
 *       (default {@link #DEFAULT_SHARDS_AT_ONCE}; 1 writes them one after the other)
 *   <li>{@code loramerge.svds}: how many weights {@code extract} decomposes at once on the GPU engine (default 4),
 *       each on its own thread and stream
 *   <li>{@code loramerge.flushBytes}: bytes a shard takes between background flushes to the disk (default
 *       {@link #DEFAULT_FLUSH_BYTES}); 0 flushes each shard only when it is finished
 * </ul>
 *
 * @param blockBytes      output bytes per row block
 * @param streams         GPU worker threads, 0 for the engine's own choice
 * @param windowPerThread blocks per worker thread that may wait to be completed in order
 * @param writes          how workers put their blocks into a shard
 * @param preadReads      whether workers read dense rows by positional reads instead of mappings; null: the engine's choice
 * @param svds            weights extract decomposes at once on the GPU engine, 0 for the engine's own choice
 * @param shardsAtOnce    output shards a merge writes at once
 * @param flushBytes      bytes written into a shard between background flushes, 0 for none before its end
 */
public record Tuning(int blockBytes, int streams, int windowPerThread, WriteMode writes, Boolean preadReads, int svds, int shardsAtOnce,
                     long flushBytes) {
    /**
     * Bytes a shard takes between background flushes (fdatasync on a thread of its own), so that the
     * final one finds little left to write: 256 MiB took the last shard's fsync after the stream from
     * 0.6-0.8 s to 0.1 s against 1 GiB (benchmarks/RESULTS.md, "the fixed costs of a run").
     */
    public static final long DEFAULT_FLUSH_BYTES = 256L << 20;

    /**
     * Output shards written at once by default. Linux takes one buffered write into a file at a time (the
     * file's lock), so one file takes about 3 GB/s however many threads write it, while four files take
     * 10 GB/s and more (tmpfs on the GPU machine, benchmarks/RESULTS.md): a merge from memory is bound by
     * the number of files it writes at once, a merge to a disk by the disk. Eight: a 7B model written as
     * 2 GB shards, all seven at once, streamed at 9.5 GB/s from tmpfs on the H200.
     */
    public static final int DEFAULT_SHARDS_AT_ONCE = 8;

    /** What the code does without any knob set. */
    public static final Tuning DEFAULTS = new Tuning(Backend.DEFAULT_BLOCK_BYTES, 0, 2, WriteMode.AUTO, null, 0, DEFAULT_SHARDS_AT_ONCE,
            DEFAULT_FLUSH_BYTES);

    /**
     * Output blocks no smaller than this (a row of the widest Hugging Face weights fits), and no larger
     * than 64 MiB: each worker holds two or three blocks of direct memory, which the launcher's 2 GiB
     * heap bounds, and larger blocks would fail with an out-of-memory error instead of measuring anything.
     */
    private static final int MIN_BLOCK_BYTES = 1 << 20;
    private static final int MAX_BLOCK_BYTES = 64 << 20;

    /**
     * The knobs as set in this JVM's system properties.
     *
     * @throws IllegalArgumentException naming the property when one is set to something it cannot be
     */
    public static Tuning current() {
        int block = intProperty("loramerge.blockBytes", DEFAULTS.blockBytes, MIN_BLOCK_BYTES, MAX_BLOCK_BYTES);
        int streams = intProperty("loramerge.streams", 0, 1, 64);
        int window = intProperty("loramerge.window", DEFAULTS.windowPerThread, 1, 64);
        String write = System.getProperty("loramerge.write", "auto");
        WriteMode writes = WriteMode.parse(write);
        if (writes == null) {
            throw new IllegalArgumentException("-Dloramerge.write=" + write + ": expected pwrite, mapped, mixed or auto");
        }
        String read = System.getProperty("loramerge.read", "engine").toLowerCase(Locale.ROOT);
        if (!read.equals("mapped") && !read.equals("pread") && !read.equals("engine")) {
            throw new IllegalArgumentException("-Dloramerge.read=" + read + ": expected mapped or pread (or engine, the default)");
        }
        int svds = intProperty("loramerge.svds", 0, 1, 16);
        int shards = intProperty("loramerge.shards", DEFAULT_SHARDS_AT_ONCE, 1, 64);
        long flush = longProperty("loramerge.flushBytes", DEFAULT_FLUSH_BYTES, 0, Long.MAX_VALUE);
        return new Tuning(block, streams, window, writes,
                read.equals("engine") ? null : read.equals("pread"), svds, shards, flush);
    }

    private static int intProperty(String name, int fallback, int min, int max) {
        return (int) longProperty(name, fallback, min, max);
    }

    private static long longProperty(String name, long fallback, long min, long max) {
        String v = System.getProperty(name);
        if (v == null) {
            return fallback;
        }
        try {
            long n = Long.parseLong(v.trim());
            if (n >= min && n <= max) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below with the range
        }
        throw new IllegalArgumentException("-D" + name + "=" + v + ": expected a whole number from " + min + " to " + max);
    }

    /** The knobs in a few words, for the report's notes: null when none is set. */
    public String describe() {
        if (equals(DEFAULTS)) {
            return null;
        }
        return "streaming knobs: block " + (blockBytes >> 10) + " KiB, " + (streams == 0 ? "default" : streams) + " GPU streams, window "
                + windowPerThread + " blocks a thread, " + writes.name().toLowerCase(Locale.ROOT) + " writes, "
                + (preadReads == null ? "the engine's" : preadReads ? "positional" : "mapped") + " reads, " + shardsAtOnce + (shardsAtOnce == 1 ? " shard" : " shards") + " at once" + (svds == 0 ? "" : ", " + svds + " SVDs at once")
                + (flushBytes == DEFAULT_FLUSH_BYTES ? "" : flushBytes == 0 ? ", no flush before a shard's end"
                : ", a flush every " + (flushBytes % (1 << 20) == 0 ? (flushBytes >> 20) + " MiB" : flushBytes + " bytes"));
    }
}
