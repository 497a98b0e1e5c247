package org.loramerge.pipeline;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Deque;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.loramerge.engine.Backend;
import org.loramerge.engine.BlockStats;
import org.loramerge.engine.Requantization;
import org.loramerge.engine.TensorJob;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.SafetensorsWriter;
import org.loramerge.format.ShardIndex;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TensorSource;
import org.loramerge.quant.Nf4Requantizer;
import org.loramerge.quant.Nf4Tensor;

/**
 * Streams a {@link MergePlan} to disk: tensors are cut into row blocks, blocks are computed by the
 * backend on worker threads and written in order by the calling thread, with a bounded number of
 * blocks in flight. Memory is bounded by (blocks in flight) x (block size) plus one tensor's adapter
 * factors, whatever the model's size; a weight requantized to NF4 adds its codes, one byte per
 * element, until it is written (see {@link Nf4Requantizer}). Unchanged tensors are copied file to
 * file without passing through the Java heap.
 */
public final class MergeRunner {
    /** Bytes written between background flushes, so the final fsync finds little left to write. */
    static final long FLUSH_EVERY = 1L << 30;

    /** Default output bytes per block. */
    public static final int DEFAULT_BLOCK_BYTES = 8 << 20;

    /** Knobs of a run. */
    /**
     * Knobs of a run.
     *
     * @param verifyRows rows per adapted tensor that {@code verify} recomputes exactly in the finished
     *                   output before it is renamed into place (0: no check); any error fails the merge
     */
    public record Options(boolean allowNonFinite, int blockBytes, int verifyRows) {
        public Options(boolean allowNonFinite, int blockBytes) {
            this(allowNonFinite, blockBytes, 0);
        }

        public static Options defaults() {
            return new Options(false, DEFAULT_BLOCK_BYTES, 0);
        }
    }

    /** The finished output failed its own verification; it was not renamed into place. */
    public static final class VerificationFailedException extends IOException {
        private static final long serialVersionUID = 1L;

        VerificationFailedException(String message) {
            super(message);
        }
    }

    /** A merge that produced values the user must decide about: overflow to infinity or NaN. */
    public static final class NonFiniteException extends IOException {
        private static final long serialVersionUID = 1L;

        NonFiniteException(String message) {
            super(message);
        }
    }

    private final MergePlan plan;
    private final Backend backend;
    private final Options options;
    private final Progress progress;
    private final ExecutorService pool;
    private final BlockingQueue<ByteBuffer> buffers;
    private final int window;
    private final Deque<Step> pending = new ArrayDeque<>();
    private final MergeReport report = new MergeReport();
    private final Map<String, BlockStats> stats = new LinkedHashMap<>();
    private final List<MergeReport.Survival> survivals = new ArrayList<>();
    private final ExecutorService flusher = Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "loramerge-flush");
        t.setDaemon(true);
        return t;
    });
    private Future<?> flushing;
    private long unflushed;

    /** Work completed in order on the writing thread. */
    private interface Step {
        void complete() throws Exception;
    }

    private MergeRunner(MergePlan plan, Backend backend, Options options, Progress progress) {
        this.plan = plan;
        this.backend = backend;
        this.options = options;
        this.progress = progress;
        int threads = backend.parallelism();
        this.window = 2 * threads + 2;
        this.pool = Executors.newFixedThreadPool(threads, r -> {
            Thread t = new Thread(r, "loramerge-worker");
            t.setDaemon(true);
            return t;
        });
        this.buffers = new ArrayBlockingQueue<>(window + 1);
        for (int i = 0; i <= window; i++) {
            buffers.add(backend.allocateBlockBuffer(options.blockBytes()));
        }
    }

    /**
     * Writes the merged model to {@code out}. The base and adapter are only read. On any failure the
     * output folder does not appear.
     */
    public static MergeReport run(MergePlan plan, Backend backend, AtomicOutput out, Options options, Progress progress)
            throws Exception {
        MergeRunner r = new MergeRunner(plan, backend, options, progress);
        try {
            return r.write(out);
        } finally {
            r.pool.shutdownNow();
            r.flusher.shutdownNow();
        }
    }

    private MergeReport write(AtomicOutput out) throws Exception {
        long start = System.nanoTime();
        Map<String, String> weightMap = new LinkedHashMap<>();
        for (MergePlan.Shard shard : plan.shards()) {
            List<SafetensorsWriter.Entry> entries = new ArrayList<>();
            for (OutputTensor t : shard.tensors()) {
                for (SafetensorsWriter.Entry e : t.entries()) {
                    entries.add(e);
                    weightMap.put(e.name(), shard.fileName());
                }
            }
            SafetensorsWriter writer = SafetensorsWriter.create(out.dir().resolve(shard.fileName()), entries, Map.of("format", "pt"));
            try {
                for (OutputTensor t : shard.tensors()) {
                    schedule(t, writer);
                }
                drain();
                if (flushing != null) {
                    get(flushing);
                    flushing = null;
                }
                writer.finish();
            } finally {
                writer.close();
            }
        }
        if (plan.isSharded()) {
            Files.write(out.dir().resolve(ShardIndex.FILE_NAME), ShardIndex.toJson(weightMap, plan.totalBytes()));
        }
        if (plan.config() != null) {
            byte[] json = org.loramerge.format.Json.pretty(plan.config()).getBytes(StandardCharsets.UTF_8);
            Files.write(out.dir().resolve("config.json"), json);
        }
        for (Path p : plan.filesToCopy()) {
            Files.copy(p, out.dir().resolve(p.getFileName()), StandardCopyOption.COPY_ATTRIBUTES);
            report.copiedFiles.add(p.getFileName().toString());
        }
        if (options.verifyRows() > 0) {
            verify(out.dir());
        }
        out.commit();
        progress.finish();
        report.seconds = (System.nanoTime() - start) / 1e9;
        report.engine = backend.describe();
        report.output = out.target().toString();
        report.shards = plan.shards().size();
        report.bytesWritten = plan.totalBytes();
        report.adapterKeys = plan.keyUse().size();
        report.warnings.addAll(plan.warnings());
        report.notes.addAll(plan.notes());
        for (OutputTensor t : plan.tensors()) {
            switch (t.kind()) {
                case MERGE: report.tensorsMerged++; break;
                case REPLACE: report.tensorsReplaced++; break;
                case CONVERT: report.tensorsConverted++; break;
                case DEQUANTIZE: report.tensorsDequantized++; break;
                default: report.tensorsCopied++;
            }
            BlockStats s = stats.get(t.name());
            if (t.kind() != OutputTensor.Kind.COPY) {
                report.tensors.add(new MergeReport.TensorOutcome(t.name(), t.kind().name().toLowerCase(java.util.Locale.ROOT),
                        t.isRequantized() ? "NF4" : t.dtype().name(), t.shape(), s == null ? 0 : s.exactFallbacks(), s == null ? 0 : s.overflows(),
                        s == null ? 0 : s.nans(), t.note()));
            }
        }
        if (!survivals.isEmpty()) {
            report.requantization = MergeReport.Requantization.of(survivals);
        }
        return report;
    }

    /** Recomputes sampled rows of the written model exactly, before it becomes visible. */
    private void verify(java.nio.file.Path written) throws IOException {
        try (org.loramerge.format.Checkpoint c = org.loramerge.format.Checkpoint.open(written)) {
            org.loramerge.verify.Verifier.Result r = org.loramerge.verify.Verifier.verify(plan, c, options.verifyRows(), 0);
            for (org.loramerge.verify.Verifier.TensorCheck t : r.tensors()) {
                if (!t.kind().equals("COPY")) {
                    report.verifiedWorstUlp.put(t.name(), t.worstUlp());
                }
            }
            if (!r.passed()) {
                throw new VerificationFailedException("the merged model failed verification, so it was not written: "
                        + String.join("; ", r.problems()) + ". This is a loramerge bug: please report it");
            }
        } catch (org.loramerge.format.SafetensorsException e) {
            throw new VerificationFailedException("the merged model could not be read back (" + e.getMessage() + "); it was not written");
        }
    }

    private void schedule(OutputTensor t, SafetensorsWriter writer) throws Exception {
        SafetensorsFile srcFile = t.source().file();
        long srcStart = t.source().info().dataStart();
        if (t.isByteCopy()) {
            long size = t.sizeInBytes();
            long chunk = 64L << 20;
            for (long off = 0; off < size; off += chunk) {
                long o = off;
                long n = Math.min(chunk, size - off);
                enqueue(() -> {
                    writer.transferFrom(srcFile.channel(), srcStart + o, n);
                    progress.addBytes(n);
                    flushInBackground(writer, n);
                });
            }
            enqueue(progress::tensorDone);
            return;
        }
        TensorJob job = TensorJob.prepare(t);
        backend.beginTensor(job);
        BlockStats tensorStats = new BlockStats();
        stats.put(t.name(), tensorStats);
        long rows = job.rows();
        // for an NF4 output the merged rows are the values to requantize, in the quant state's dtype
        long outRowBytes = (long) job.cols() * t.dtype().sizeInBytes();
        long srcRowBytes = (long) job.cols() * t.source().dtype().sizeInBytes();
        if (Math.max(outRowBytes, srcRowBytes) > options.blockBytes()) {
            throw new IOException(t.name() + ": one row of " + job.cols() + " elements is larger than the " + options.blockBytes()
                    + "-byte streaming block, which no Hugging Face architecture has; the merge cannot stream this tensor");
        }
        int rowsPerBlock = (int) Math.max(1, options.blockBytes() / Math.max(outRowBytes, srcRowBytes));
        if (job.needsColumnPass()) {
            columnPass(job, rowsPerBlock, srcRowBytes);
        }
        if (t.isRequantized()) {
            scheduleRequantized(t, job, tensorStats, srcRowBytes, outRowBytes, writer);
            return;
        }
        boolean packed = backend.readsPacked(job);
        for (long row0 = 0; row0 < rows; row0 += rowsPerBlock) {
            long r0 = row0;
            int n = (int) Math.min(rowsPerBlock, rows - row0);
            Future<ByteBuffer> f = pool.submit(() -> {
                ByteBuffer dst = buffers.take();
                try (TensorSource.Bytes src = packed ? t.source().readPacked(r0 * job.cols(), n * job.cols())
                        : t.source().read(r0 * srcRowBytes, n * srcRowBytes)) {
                    dst.clear();
                    backend.mergeRows(job, r0, n, src.bytes(), dst, tensorStats);
                    dst.limit((int) (n * outRowBytes));
                    dst.position(0);
                    return dst;
                } catch (Exception e) {
                    buffers.add(dst);
                    throw e;
                }
            });
            enqueue(() -> {
                ByteBuffer b = get(f);
                try {
                    writer.write(b);
                } finally {
                    buffers.add(b);
                }
                progress.addBytes(n * outRowBytes);
                flushInBackground(writer, n * outRowBytes);
            });
        }
        enqueue(() -> {
            backend.endTensor(job);
            progress.tensorDone();
            checkFinite(t, tensorStats);
        });
    }

    private void checkFinite(OutputTensor t, BlockStats tensorStats) throws NonFiniteException {
        if (!options.allowNonFinite() && (tensorStats.overflows() > 0 || tensorStats.nans() > 0)) {
            throw new NonFiniteException(t.name() + ": " + tensorStats.overflows() + " elements overflowed to infinity and "
                    + tensorStats.nans() + " became NaN in " + t.dtype() + "; merge to --dtype bf16 or f32, or pass --allow-overflow to keep them");
        }
    }

    /**
     * An NF4 output ({@code --to nf4}): each worker merges its rows, rounded once to the quant
     * state's dtype, and requantizes them on the spot into the tensor's {@link Nf4Requantizer}; the
     * writing thread writes the packed codes in order, then the rest of the group. Row blocks hold
     * whole NF4 blocks (a multiple of {@code blocksize / gcd(cols, blocksize)} rows), so that no
     * quantization block straddles two workers. A worker's decoded base rows, merged rows and ΔW
     * (8 bytes an element, which sizes the row blocks) are its own heap buffers, dropped with the
     * block; the packed codes it writes into live in the requantizer until the tensor is done.
     */
    private void scheduleRequantized(OutputTensor t, TensorJob job, BlockStats tensorStats, long srcRowBytes, long outRowBytes,
                                     SafetensorsWriter writer) throws Exception {
        Requantization onBackend = backend.requantize(job);
        if (onBackend != null) {
            scheduleRequantizedOnBackend(t, job, onBackend, tensorStats, outRowBytes, writer);
            return;
        }
        Nf4Requantizer requant = new Nf4Requantizer(t.name(), t.source().file().path(), t.source().nf4().tensor().state());
        long cols = job.cols();
        long rows = job.rows();
        // a block's ΔW is held as doubles (8 bytes an element): size blocks by that
        long perBlock = nf4RowsPerBlock(cols, requant.blocksize(), cols * Double.BYTES);
        for (long r0 = 0; r0 < rows; r0 += perBlock) {
            long row0 = r0;
            int n = (int) Math.min(perBlock, rows - r0);
            Future<ByteBuffer> f = pool.submit(() -> {
                try (TensorSource.Bytes src = t.source().read(row0 * srcRowBytes, n * srcRowBytes)) {
                    int count = Math.toIntExact(n * cols);
                    ByteBuffer merged = ByteBuffer.allocate(Math.toIntExact(n * outRowBytes)).order(ByteOrder.LITTLE_ENDIAN);
                    double[] delta = new double[count];
                    BlockStats s = new BlockStats(delta);
                    backend.mergeRows(job, row0, n, src.bytes(), merged, s);
                    tensorStats.add(s);
                    requant.encode(row0 * cols, count, merged, src.bytes(), delta);
                    return requant.packed(row0 * cols, count);
                }
            });
            enqueue(() -> writeBlock(writer, get(f)));
        }
        List<Future<Nf4Requantizer.Change>> measured = new ArrayList<>();
        enqueue(() -> {
            backend.endTensor(job);
            checkFinite(t, tensorStats);
            requant.finish();
            writeTail(writer, requant.tail(t.nf4().quantStateBytes()));
            for (int c = 0; c < requant.chunks(); c++) {
                int chunk = c;
                measured.add(pool.submit(() -> requant.measure(chunk)));
            }
        });
        enqueue(() -> {
            Nf4Requantizer.Change change = Nf4Requantizer.Change.NONE;
            for (Future<Nf4Requantizer.Change> f : measured) {
                change = change.plus(get(f)); // in chunk order: the same sums whatever the thread count
            }
            survivals.add(survival(t, requant.outputState().isDoubleQuant(), change));
        });
    }

    /**
     * An NF4 output the backend merges and requantizes on its own ({@link Backend#requantize}):
     * workers hand it the base's packed codes of their rows and write back the new ones; row
     * blocks hold whole NF4 blocks and as many elements as a streaming block of the quant state's
     * dtype.
     */
    private void scheduleRequantizedOnBackend(OutputTensor t, TensorJob job, Requantization requant, BlockStats tensorStats,
                                              long outRowBytes, SafetensorsWriter writer) throws Exception {
        long cols = job.cols();
        long rows = job.rows();
        long perBlock = nf4RowsPerBlock(cols, t.source().nf4().tensor().blocksize(), outRowBytes);
        // on a failure the backend frees what an unfinished requantization holds when it closes
        for (long r0 = 0; r0 < rows; r0 += perBlock) {
            long row0 = r0;
            int n = (int) Math.min(perBlock, rows - r0);
            Future<ByteBuffer> f = pool.submit(() -> {
                try (TensorSource.Bytes src = t.source().readPacked(row0 * cols, Math.toIntExact(n * cols))) {
                    BlockStats s = new BlockStats();
                    ByteBuffer out = requant.mergeRows(row0, n, src.bytes(), s);
                    tensorStats.add(s);
                    return out;
                }
            });
            enqueue(() -> writeBlock(writer, get(f)));
        }
        enqueue(() -> {
            Requantization.Result r;
            try {
                checkFinite(t, tensorStats);
                r = requant.finish();
            } finally {
                requant.close();
            }
            backend.endTensor(job);
            writeTail(writer, r.tail(t.nf4().quantStateBytes()));
            survivals.add(survival(t, r.outputState().isDoubleQuant(), r.change()));
        });
    }

    /**
     * Rows per block of a requantized weight: whole NF4 blocks (a multiple of
     * {@code blocksize / gcd(cols, blocksize)} rows), about a streaming block of {@code bytesPerRow}.
     */
    private long nf4RowsPerBlock(long cols, long blocksize, long bytesPerRow) {
        long align = blocksize / gcd(cols, blocksize); // rows whose elements fill whole blocks
        long fit = Math.max(1, options.blockBytes() / bytesPerRow);
        return Math.max(align, fit / align * align);
    }

    /** The tensors after a requantized weight's codes (absmax, maps, quant state); the weight is then done. */
    private void writeTail(SafetensorsWriter writer, List<ByteBuffer> tail) throws Exception {
        for (ByteBuffer b : tail) {
            long bytes = b.remaining();
            writer.write(b);
            progress.addBytes(bytes);
        }
        progress.tensorDone();
    }

    private static MergeReport.Survival survival(OutputTensor t, boolean doubleQuant, Nf4Requantizer.Change change) {
        Nf4Tensor base = t.source().nf4().tensor();
        return MergeReport.Survival.of(t.name(), t.shape(), base.blocksize(), doubleQuant, base.numElements(), change.codesChanged(),
                Math.sqrt(change.deltaSq()), Math.sqrt(change.sumSq()), change.dot());
    }

    /** Writes a finished block of codes in order and starts its flush to disk (writer thread). */
    private void writeBlock(SafetensorsWriter writer, ByteBuffer b) throws Exception {
        long bytes = b.remaining();
        writer.write(b);
        progress.addBytes(bytes);
        flushInBackground(writer, bytes);
    }

    private static long gcd(long a, long b) {
        return b == 0 ? a : gcd(b, a % b);
    }

    /** Every FLUSH_EVERY bytes, has the disk start on what is written while the merge goes on. */
    private void flushInBackground(SafetensorsWriter writer, long bytes) throws Exception {
        unflushed += bytes;
        if (unflushed >= FLUSH_EVERY && (flushing == null || flushing.isDone())) {
            if (flushing != null) {
                get(flushing); // surfaces a failed flush
            }
            unflushed = 0;
            flushing = flusher.submit(() -> {
                writer.force();
                return null;
            });
        }
    }

    private void columnPass(TensorJob job, int rowsPerBlock, long srcRowBytes) throws Exception {
        OutputTensor t = job.out();
        int cols = job.cols();
        List<Future<double[][]>> parts = new ArrayList<>();
        for (long row0 = 0; row0 < job.rows(); row0 += rowsPerBlock) {
            long r0 = row0;
            int n = (int) Math.min(rowsPerBlock, job.rows() - row0);
            parts.add(pool.submit(() -> {
                double[] sumSq = new double[cols];
                double[] sumErr = new double[cols];
                try (TensorSource.Bytes src = t.source().read(r0 * srcRowBytes, n * srcRowBytes)) {
                    backend.columnSums(job, r0, n, src.bytes(), sumSq, sumErr);
                }
                return new double[][] {sumSq, sumErr};
            }));
        }
        double[] sumSq = new double[cols];
        double[] sumErr = new double[cols];
        for (Future<double[][]> f : parts) {
            double[][] p = get(f);
            for (int j = 0; j < cols; j++) {
                sumSq[j] += p[0][j];
                sumErr[j] += p[1][j];
            }
        }
        org.loramerge.engine.cpu.CpuMerge.finishColumns(job, sumSq, sumErr);
    }

    private void enqueue(Step step) throws Exception {
        pending.addLast(step);
        while (pending.size() > window) {
            pending.removeFirst().complete();
        }
    }

    private void drain() throws Exception {
        while (!pending.isEmpty()) {
            pending.removeFirst().complete();
        }
    }

    private static <T> T get(Future<T> f) throws Exception {
        try {
            return f.get();
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) {
                throw (Exception) c;
            }
            throw new IOException(c);
        }
    }
}
