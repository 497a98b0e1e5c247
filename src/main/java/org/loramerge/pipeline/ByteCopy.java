package org.loramerge.pipeline;

import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.OutputTensor;

/** {@link OutputTensor.Route#BYTE_COPY}: the source's bytes copied file to file, without passing through the Java heap. */
final class ByteCopy implements TensorStrategy {
    static final ByteCopy INSTANCE = new ByteCopy();
    /** Bytes per copy step, so that progress moves and other work interleaves. */
    private static final long CHUNK = 64L << 20;

    private ByteCopy() {
    }

    @Override
    public void schedule(OutputTensor t, MergeContext ctx) throws Exception {
        SafetensorsFile file = t.source().file();
        long start = t.source().info().dataStart();
        long size = t.sizeInBytes();
        CheckpointWriter.Shard shard = ctx.shard;
        for (long off = 0; off < size; off += CHUNK) {
            long o = off;
            long n = Math.min(CHUNK, size - off);
            ctx.executor.then(() -> shard.transferFrom(file.channel(), start + o, n));
        }
        ctx.executor.then(ctx.progress::tensorDone);
    }
}
