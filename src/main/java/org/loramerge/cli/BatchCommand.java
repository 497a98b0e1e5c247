package org.loramerge.cli;

import java.io.PrintStream;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.loramerge.batch.BatchResult;
import org.loramerge.batch.BatchRunner;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "batch", mixinStandardHelpOptions = true, sortOptions = false,
        description = {"Runs many merges from a manifest, several at once over the host's GPUs (or the CPU).",
                "Each line of the manifest (JSON Lines) is one merge with merge's options in snake_case, e.g. "
                        + "{\"base\": \"llama\", \"adapter\": \"customer-a\", \"out\": \"merged/customer-a\", \"dtype\": \"bf16\"}; "
                        + "relative paths start at the manifest's folder (README.md, Batch).",
                "A line that fails is reported with its line number and reason and the others go on. A re-run skips every line "
                        + "whose output is there with the checksum the state folder recorded, and redoes the rest.",
                "Exit code: 0 when every line is done or skipped; 3 when any line failed or could not run (each with its own "
                        + "exit code in the report); 3 before anything runs for an unreadable manifest, two lines with one output, "
                        + "or any bad line under --strict; 7 for --devices all without a GPU; 4 for a state folder in use."})
final class BatchCommand implements Callable<Integer> {
    @Option(names = "--manifest", required = true, paramLabel = "MERGES.jsonl", description = "the manifest: one merge per line (JSON Lines)")
    Path manifest;

    @Option(names = "--devices", paramLabel = "all|cpu|cuda:N,...",
            description = "where the merges run: all (every visible GPU), cpu, or a list such as cuda:0,cuda:1 "
                    + "(default: every GPU where there is one, else the CPU). A line's own \"device\" wins")
    String devices;

    @Option(names = "--parallel", paramLabel = "N", description = "merges at once in total, given to the devices in turn "
            + "(default: one per device; the CPU cores are shared out among them)")
    Integer parallel;

    @Option(names = "--strict", description = "refuse the whole batch, running nothing, when any line is malformed or names a missing folder")
    boolean strict;

    @Option(names = "--state", paramLabel = "DIR", description = "where the batch records what it wrote (default: MERGES.jsonl.state beside the manifest)")
    Path state;

    @Option(names = "--no-shared-read", description = "merge every line on its own; by default lines of one base (and the same dtype, "
            + "to, max_shard_size, follow_symlinks and device) are merged in one pass that reads each block of the base once for all of them")
    boolean noSharedRead;

    @Option(names = "--json", description = "print the summary as JSON on stdout: one object per manifest line and the totals (snake_case keys)")
    boolean json;

    @Option(names = "--quiet", description = "no progress on stderr")
    boolean quiet;

    @Override
    public Integer call() throws Exception {
        PrintStream err = System.err;
        BatchResult r = BatchRunner.run(manifest, new BatchRunner.Options(devices, parallel, strict, state, !noSharedRead, quiet ? null : err));
        if (json) {
            CliJson.print(System.out, r, false);
        }
        if (!quiet) {
            for (BatchResult.LineResult l : r.merges()) {
                if (BatchResult.FAILED.equals(l.status())) {
                    err.println("batch: line " + l.line() + " failed (exit " + l.exitCode() + "): " + l.error());
                }
            }
        }
        return r.totals().exitCode();
    }
}
