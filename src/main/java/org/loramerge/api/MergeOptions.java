package org.loramerge.api;

import java.io.PrintStream;
import org.loramerge.plan.PlanOptions;

/**
 * How {@link LoraMerge#merge} runs; the same choices as the {@code merge} command's options, with
 * the same spellings. Immutable: start from {@link #defaults()} and change one choice at a time.
 *
 * @param dtype         {@code auto} (each tensor keeps its dtype), or {@code f32}, {@code f16}, {@code bf16}
 *                      (aliases: fp32, float32, float, fp16, float16, half, bfloat16)
 * @param to            for a quantized base: {@code bf16}, {@code f16}, {@code f32}, or a requantization
 *                      ({@code nf4}, {@code fp4}, {@code int8}, {@code fp8}; see the merge command's --to); else null
 * @param device        {@code auto}, {@code cpu}, {@code cuda} or {@code cuda:N}
 * @param maxShardSize  largest output shard in bytes
 * @param overwrite     replace an existing output folder (only once the new model is complete)
 * @param allowOverflow write values that overflow the output dtype as ±Inf instead of failing
 * @param threads       CPU threads, 0 for all cores
 * @param verifyRows    rows per adapted tensor recomputed exactly in the finished output before it
 *                      appears, unchanged tensors then compared completely (0: no check;
 *                      {@link VerifyOptions#ALL_ROWS}: every row); any error fails the merge
 * @param log           where progress, the engine's choice and warnings are printed, or null for none
 * @param followSymlinks read the input folders' files wherever their symbolic links lead; by default a
 *                      link may lead only inside its folder (or a Hugging Face cache snapshot's blobs)
 * @param allowEmptyAdapter write the output even when the adapter changes no tensor (a copy of the
 *                      base); by default that is an {@link org.loramerge.adapter.AdapterException}
 */
public record MergeOptions(String dtype, String to, String device, long maxShardSize, boolean overwrite, boolean allowOverflow,
                           int threads, int verifyRows, PrintStream log, boolean followSymlinks, boolean allowEmptyAdapter) {
    /** auto dtype, auto device, 5 GB shards, no overwrite, all cores, no verification, silent, links kept inside their folders. */
    public static MergeOptions defaults() {
        return new MergeOptions("auto", null, "auto", PlanOptions.DEFAULT_MAX_SHARD_SIZE, false, false, 0, 0, null, false, false);
    }

    public MergeOptions withDtype(String newDtype) {
        return new MergeOptions(newDtype, to, device, maxShardSize, overwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withTo(String newTo) {
        return new MergeOptions(dtype, newTo, device, maxShardSize, overwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withDevice(String newDevice) {
        return new MergeOptions(dtype, to, newDevice, maxShardSize, overwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withMaxShardSize(long bytes) {
        return new MergeOptions(dtype, to, device, bytes, overwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withOverwrite(boolean newOverwrite) {
        return new MergeOptions(dtype, to, device, maxShardSize, newOverwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withAllowOverflow(boolean allow) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allow, threads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withThreads(int newThreads) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allowOverflow, newThreads, verifyRows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withVerifyRows(int rows) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allowOverflow, threads, rows, log, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withLog(PrintStream newLog) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allowOverflow, threads, verifyRows, newLog, followSymlinks, allowEmptyAdapter);
    }

    public MergeOptions withFollowSymlinks(boolean follow) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allowOverflow, threads, verifyRows, log, follow, allowEmptyAdapter);
    }

    public MergeOptions withAllowEmptyAdapter(boolean allow) {
        return new MergeOptions(dtype, to, device, maxShardSize, overwrite, allowOverflow, threads, verifyRows, log, followSymlinks, allow);
    }
}
