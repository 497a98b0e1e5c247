package org.loramerge.format;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

/**
 * Review: models written through mappings at once in one JVM (batch --parallel, API users) each fit
 * their file system alone but not together, and the JVM died of a bus error. The ledger counts what
 * each still has to write.
 */
class RoomLedgerTest {
    @TempDir
    Path dir;
    private long usable;

    @BeforeEach
    void room() throws IOException {
        assumeTrue(Files.getFileStore(dir).getTotalSpace() > 0, "a file system that keeps a count of its room");
        usable = Files.getFileStore(dir).getUsableSpace();
        assumeTrue(usable > (1L << 30), "a GiB free");
    }

    @Test
    void twoMappedModelsThatFitAloneButNotTogetherAreRefusedTheSecondTimeUntilTheFirstEndsOrIsWritten() throws IOException {
        long half = usable / 2 + (256L << 20);
        try (RoomLedger.Claim first = RoomLedger.claim(dir, "a", "the merged model", half, true)) {
            assertEquals(half, RoomLedger.outstanding(dir));
            IOException e = assertThrows(IOException.class, () -> RoomLedger.claim(dir, "b", "the merged model", half, true));
            assertTrue(e.getMessage().startsWith("b: No space left on device: the merged model needs " + half + " bytes")
                    && e.getMessage().contains(half + " of them still to be written by other models this process writes"), e.getMessage());
            first.wrote(half); // all of it written: its room is taken on the disk, no more to promise
            assertEquals(0, RoomLedger.outstanding(dir));
            try (RoomLedger.Claim second = RoomLedger.claim(dir, "b", "the merged model", half, true)) {
                assertEquals(half, RoomLedger.outstanding(dir));
            }
        }
        assertEquals(0, RoomLedger.outstanding(dir), "closed claims are gone");
        try (RoomLedger.Claim again = RoomLedger.claim(dir, "b", "the merged model", half, true)) {
            assertEquals(half, RoomLedger.outstanding(dir));
        }
    }

    @Test
    void positionalModelsAreCheckedOnlyWhileAMappedOneIsWrittenThere() throws IOException {
        long more = usable + (1L << 30);
        // alone, a positional write reports a full disk itself: nothing is refused in advance
        try (RoomLedger.Claim p = RoomLedger.claim(dir, "p", "the merged model", more, false)) {
            assertEquals(more, RoomLedger.outstanding(dir));
        }
        try (RoomLedger.Claim m = RoomLedger.claim(dir, "m", "the merged model", 1 << 20, true)) {
            // it would take the room the mapped one counts on
            assertThrows(IOException.class, () -> RoomLedger.claim(dir, "p", "the merged model", more, false));
        }
        assertThrows(IOException.class, () -> RoomLedger.claim(dir, "m", "the merged model", more, true));
        assertEquals(0, RoomLedger.outstanding(dir));
    }
}
