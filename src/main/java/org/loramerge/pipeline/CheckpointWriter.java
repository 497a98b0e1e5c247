package org.loramerge.pipeline;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicLong;
import org.loramerge.engine.Tuning;
import org.loramerge.format.Json;
import org.loramerge.format.RoomLedger;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.ShardIndex;
import org.loramerge.format.WriteMode;

/**
 * Writes a Hugging Face model folder into an {@link AtomicOutput}: safetensors shards
 * ({@link #openShard}, several open at once where the caller interleaves their tensors), then the shard index when there is more than one, config.json,
 * the files carried over (the base's, and tokenizer files of the adapter folder), the model card
 * of a merge, and the commit that makes it all appear at once. Every
 * command that writes a model (merge, quantize) goes through it, so they write the same layout.
 */
public final class CheckpointWriter implements AutoCloseable {
    /** Every safetensors header says which framework's tensors these are, as transformers' writer does. */
    private static final Map<String, String> METADATA = Map.of("format", "pt");

    private final AtomicOutput out;
    private final Progress progress;
    private final Map<String, String> weightMap = new LinkedHashMap<>();
    private final ExecutorService flusher = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "loramerge-flush");
        t.setDaemon(true);
        return t;
    });
    /** Finishes shards in the background (one at a time: each ends with an fsync of its file). */
    private final ExecutorService finisher = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "loramerge-finish");
        t.setDaemon(true);
        return t;
    });
    private final WriteMode writes;
    /** Bytes a shard takes between background flushes, so the final fsync finds little left to write; 0: none. */
    private final long flushBytes;
    /** The room this model claimed on its file system, which shrinks as its bytes are written. */
    private final RoomLedger.Claim room;
    private final AtomicLong tensorBytes = new AtomicLong();

    /** A writer into {@code out}; bytes written are counted into {@code progress}. */
    public CheckpointWriter(AtomicOutput out, Progress progress) {
        this(out, progress, WriteMode.POSITIONAL, Tuning.DEFAULT_FLUSH_BYTES, RoomLedger.Claim.none());
    }

    /**
     * A writer into {@code out} whose shards take the workers' blocks ({@link Shard#writeAt}) as
     * {@code writes} says: by positional writes, by copies into memory mappings of their places, or
     * mixed ({@link SafetensorsWriter#create(Path, List, Map, WriteMode)}), each shard flushed to
     * the disk in the background every {@code flushBytes} bytes (0: only when finished), and the bytes
     * written counted against {@code room}.
     */
    public CheckpointWriter(AtomicOutput out, Progress progress, WriteMode writes, long flushBytes, RoomLedger.Claim room) {
        this.out = out;
        this.progress = progress;
        this.writes = writes;
        this.flushBytes = flushBytes;
        this.room = room;
    }

    /** The bytes of a shard of these tensors besides theirs: its header, as {@link #openShard} writes it. */
    public static long headerBytes(List<SafetensorsWriter.Entry> entries) {
        return SafetensorsWriter.header(entries, METADATA).length;
    }

    /** The folder being written (hidden until {@link #commit}). */
    public Path dir() {
        return out.dir();
    }

    /** The folder the model appears as. */
    public Path target() {
        return out.target();
    }

    /**
     * Creates shard {@code fileName} with these tensors, in this order, and writes its header; the
     * tensors' bytes follow through the returned shard, which must be {@linkplain Shard#finish
     * finished} (here or {@linkplain #finishLater in the background}) before the model is committed.
     * Shards are opened in the index's order.
     */
    public Shard openShard(String fileName, List<SafetensorsWriter.Entry> entries) throws IOException {
        long fixed = 0;
        for (SafetensorsWriter.Entry e : entries) {
            weightMap.put(e.name(), fileName);
            fixed += e.late() ? 0 : e.sizeInBytes();
        }
        return new Shard(SafetensorsWriter.create(out.dir().resolve(fileName), entries, METADATA, writes), fixed);
    }

    /** Writes model.safetensors.index.json for the shards written (transformers' layout of a sharded model). */
    public void writeIndex() throws IOException {
        Files.write(out.dir().resolve(ShardIndex.FILE_NAME), ShardIndex.toJson(weightMap, tensorBytes.get()));
    }

    /**
     * Writes config.json as transformers' save_pretrained does ({@link Json#python}), so that it
     * differs from a base written by transformers only in the keys the merge or quantization changed.
     */
    public void writeConfig(ObjectNode config) throws IOException {
        writeText("config.json", Json.python(config));
    }

    /** Writes a UTF-8 text file (the model card). */
    public void writeText(String fileName, String text) throws IOException {
        Files.write(out.dir().resolve(fileName), text.getBytes(StandardCharsets.UTF_8));
    }

    /** Copies non-weight files (tokenizer, generation config, license, ...) as they are; returns their names. */
    public List<String> carry(List<Path> files) throws IOException {
        List<String> names = new ArrayList<>();
        for (Path p : files) {
            Files.copy(p, out.dir().resolve(p.getFileName()), StandardCopyOption.COPY_ATTRIBUTES);
            names.add(p.getFileName().toString());
        }
        return names;
    }

    /** Bytes of tensor data in the shards written so far (a late tensor counts once its shard is finished). */
    public long tensorBytes() {
        return tensorBytes.get();
    }

    /** Makes the model durable and visible under its final name (see {@link AtomicOutput#commit}). */
    public void commit() throws IOException {
        out.commit();
    }

    /**
     * {@link Shard#finish} of {@code shard} on a background thread, once every byte of it is written
     * (while the next shards' work goes on), then its file closed, finished or not, so that a merge of
     * many shards holds only the open ones' files; the future fails as {@code finish} would.
     */
    public Future<?> finishLater(Shard shard) {
        return finisher.submit(() -> {
            try {
                shard.finish();
            } finally {
                shard.close();
            }
            return null;
        });
    }

    @Override
    public void close() {
        flusher.shutdownNow();
        finisher.shutdownNow();
    }

    /**
     * One shard being written. Tensor bytes are either appended in header order from the writing
     * thread ({@link #write}, {@link #transferFrom}) or placed at their offsets by worker threads
     * ({@link #writeAt}), which then report them from the writing thread ({@link #written}) for
     * progress; late tensors ({@link SafetensorsWriter.Entry#late}) are given whenever they are
     * known ({@link #writeLate}). Every {@code flushBytes} bytes the disk is started on what is
     * written while the work goes on.
     */
    public final class Shard implements AutoCloseable {
        private final SafetensorsWriter writer;
        private final long fixedBytes;
        private Future<?> flushing;
        private long unflushed;

        private Shard(SafetensorsWriter writer, long fixedBytes) {
            this.writer = writer;
            this.fixedBytes = fixedBytes;
            tensorBytes.addAndGet(fixedBytes);
        }

        /** Where tensor {@code name}'s bytes start in the shard's data section. */
        public long offsetOf(String name) {
            return writer.offsetOf(name);
        }

        /** Appends a block of the tensor being written (writing thread). */
        public void write(ByteBuffer block) throws Exception {
            long n = block.remaining();
            writer.write(block);
            written(n);
        }

        /** The bytes of late tensor {@code name}, written after the shard's other tensors (writing thread). */
        public void writeLate(String name, ByteBuffer bytes) throws Exception {
            long n = bytes.remaining();
            writer.writeLate(name, bytes);
            written(n);
        }

        /**
         * Writes the tensors of a group after its first one (writing thread): {@code bytes.get(i)} is
         * the content of {@code entries.get(i)}, each appended or, for a late entry, given as such.
         */
        public void writeTail(List<SafetensorsWriter.Entry> entries, List<ByteBuffer> bytes) throws Exception {
            if (entries.size() != bytes.size()) {
                throw new IllegalArgumentException(bytes.size() + " buffers for " + entries.size() + " tensors");
            }
            for (int i = 0; i < entries.size(); i++) {
                if (entries.get(i).late()) {
                    writeLate(entries.get(i).name(), bytes.get(i));
                } else {
                    write(bytes.get(i));
                }
            }
        }

        /** Appends {@code length} bytes of another file, without copying them through the heap (writing thread). */
        public void transferFrom(FileChannel source, long position, long length) throws Exception {
            writer.transferFrom(source, position, length);
            written(length);
        }

        /** Writes {@code block} at {@code offset} of the data section; any thread, disjoint ranges. Report it with {@link #written}. */
        public void writeAt(long offset, ByteBuffer block) throws IOException {
            writer.writeAt(offset, block);
        }

        /** Counts {@code n} bytes a worker wrote (writing thread): progress and the background flush. */
        public void written(long n) throws Exception {
            progress.addBytes(n);
            room.wrote(n);
            unflushed += n;
            if (flushBytes > 0 && unflushed >= flushBytes && (flushing == null || flushing.isDone())) {
                if (flushing != null) {
                    BlockExecutor.get(flushing); // surfaces a failed flush
                }
                unflushed = 0;
                flushing = flusher.submit(() -> {
                    writer.force();
                    return null;
                });
            }
        }

        /** Waits for a background flush, checks that every declared byte was written and forces the file to disk. */
        public void finish() throws Exception {
            if (flushing != null) {
                BlockExecutor.get(flushing);
                flushing = null;
            }
            tensorBytes.addAndGet(writer.finish() - fixedBytes);
        }

        @Override
        public void close() throws IOException {
            writer.close();
        }
    }
}
