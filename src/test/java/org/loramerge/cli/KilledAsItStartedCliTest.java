package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.cli.CliRun.merge;
import static org.loramerge.testutil.TinyModels.hashTree;
import static org.loramerge.testutil.TinyModels.list;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.writeAdapter;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.time.Instant;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.testutil.TinyModels;

/**
 * A merge killed (SIGKILL) as it started, after it created the empty owner record of its output
 * ({@code .NAME.loramerge-lock-ID}) and before it locked it and made its partial folder (a finding
 * of scripts/bench/kill-campaign.sh): the next merge into the same {@code --out} succeeds and
 * writes what a clean merge writes; it removes a record older than a minute and leaves a younger
 * one alone, since that may belong to a merge that is starting right now, for a later merge to
 * remove.
 */
class KilledAsItStartedCliTest {
    /** What the killed merge left: its owner record, created but never locked or written. */
    private static final String RECORD = ".merged.loramerge-lock-0badf00d";

    @TempDir
    Path dir;

    private Path base;
    private Path adapter;
    private Path out;
    private Path record;
    private Map<String, String> cleanMerge;

    @BeforeEach
    void mergeCleanlyAndLeaveWhatTheKillLeaves() throws IOException {
        base = TinyModels.writeTinyLlama(dir.resolve("models/base"));
        adapter = writeAdapter(dir.resolve("models/adapter"), loraConfig(4, 8, "[\"q_proj\"]", ""), qProjAdapter(4));
        Path reference = dir.resolve("reference/merged");
        assertEquals(ExitCodes.OK, merge(base, adapter, reference).code());
        cleanMerge = hashTree(reference);

        Path outputs = Files.createDirectories(dir.resolve("outputs"));
        out = outputs.resolve("merged");
        record = Files.createFile(outputs.resolve(RECORD));
    }

    private void age(Duration age) throws IOException {
        Files.setLastModifiedTime(record, FileTime.from(Instant.now().minus(age)));
    }

    @Test
    void anEmptyOwnerRecordOlderThanAMinuteIsRemovedByTheNextMergeWhichWritesTheCleanMergesBytes() throws IOException {
        age(Duration.ofMinutes(2));

        CliRun.Result r = merge(base, adapter, out);

        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertEquals(cleanMerge, hashTree(out), "the merge after the kill wrote other bytes than a clean merge");
        assertEquals(List.of("merged"), list(out.getParent()), "an owner record, partial folder or old output is left beside --out");
    }

    @Test
    void anEmptyOwnerRecordYoungerThanAMinuteOutlivesTheNextMergeWhichSucceedsAndAMergeAfterTheMinuteRemovesIt() throws IOException {
        age(Duration.ofSeconds(10));

        CliRun.Result r = merge(base, adapter, out);

        assertEquals(ExitCodes.OK, r.code(), r::err);
        assertEquals(cleanMerge, hashTree(out), "the merge beside a young record wrote other bytes than a clean merge");
        assertEquals(List.of(RECORD, "merged"), list(out.getParent()),
                "a young empty record (perhaps a merge starting now) must be left alone, and nothing else left behind");
        assertEquals(0, Files.size(record), "the young record was written to");

        age(Duration.ofMinutes(2));
        CliRun.Result again = merge(base, adapter, out, "--overwrite");

        assertEquals(ExitCodes.OK, again.code(), again::err);
        assertEquals(cleanMerge, hashTree(out));
        assertEquals(List.of("merged"), list(out.getParent()), "the record, now older than a minute, outlived a second merge");
        assertTrue(Files.notExists(record));
    }
}
