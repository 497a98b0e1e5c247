package org.loramerge.pipeline;

import java.util.concurrent.Future;
import org.loramerge.engine.Stages.Stage;
import org.loramerge.format.MappedRegion;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.plan.OutputTensor;

/**
 * {@link OutputTensor.Route#BYTE_COPY}: the source's bytes copied file to file in chunks, each by a
 * worker from the memory-mapped source straight to its place in the shard, never through the Java
 * heap.
 */
final class ByteCopy implements TensorStrategy {
    static final ByteCopy INSTANCE = new ByteCopy();
    /** Bytes per copy step, so that progress moves and other work interleaves. */
    private static final long CHUNK = 64L << 20;

    private ByteCopy() {
    }

    @Override
    public void schedule(OutputTensor t, MergeContext ctx) throws Exception {
        SafetensorsFile file = t.source().file();
        TensorInfo info = t.source().info();
        long size = t.sizeInBytes();
        CheckpointWriter.Shard shard = ctx.shard;
        long tensorOffset = shard.offsetOf(t.name());
        for (long off = 0; off < size; off += CHUNK) {
            long o = off;
            long n = Math.min(CHUNK, size - off);
            Future<Long> f = ctx.executor.submit(() -> {
                long reading = System.nanoTime();
                try (MappedRegion r = file.map(info, o, n)) {
                    long writing = ctx.stages.since(Stage.READ, reading, n);
                    shard.writeAt(tensorOffset + o, r.bytes());
                    ctx.stages.since(Stage.WRITE, writing, n);
                }
                return n;
            });
            ctx.executor.then(() -> shard.written(BlockExecutor.get(f)));
        }
        ctx.executor.then(ctx.progress::tensorDone);
    }
}
