package org.loramerge.engine;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.loramerge.format.WriteMode;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The hidden streaming knobs: unset, the code's own defaults; set, read as given; out of range, refused by name. */
class TuningTest {
    private static final String[] KNOBS = {"loramerge.blockBytes", "loramerge.streams", "loramerge.window", "loramerge.write", "loramerge.read",
        "loramerge.svds", "loramerge.shards", "loramerge.flushBytes"};

    @AfterEach
    void clear() {
        for (String k : KNOBS) {
            System.clearProperty(k);
        }
    }

    @Test
    void withoutKnobsARunTakesTheCodesOwnDefaults() {
        assertEquals(new Tuning(Backend.DEFAULT_BLOCK_BYTES, 0, 2, WriteMode.AUTO, null, 0, 8, 256L << 20), Tuning.current());
        assertNull(Tuning.current().describe(), "nothing to note");
    }

    @Test
    void knobsAreReadAsGivenAndNoted() {
        System.setProperty("loramerge.blockBytes", "33554432");
        System.setProperty("loramerge.streams", "12");
        System.setProperty("loramerge.window", "4");
        System.setProperty("loramerge.write", "MAPPED");
        System.setProperty("loramerge.read", "pread");
        System.setProperty("loramerge.svds", "5");
        System.setProperty("loramerge.shards", "1");
        System.setProperty("loramerge.flushBytes", "0");
        Tuning t = Tuning.current();
        assertEquals(new Tuning(32 << 20, 12, 4, WriteMode.MAPPED, true, 5, 1, 0), t);
        assertEquals("streaming knobs: block 32768 KiB, 12 GPU streams, window 4 blocks a thread, mapped writes, positional reads, "
                + "1 shard at once, 5 SVDs at once, no flush before a shard's end",
                t.describe());
        System.setProperty("loramerge.flushBytes", Long.toString(1L << 30));
        assertEquals(1L << 30, Tuning.current().flushBytes());
        assertTrue(Tuning.current().describe().endsWith(", a flush every 1024 MiB"), Tuning.current().describe());
        System.setProperty("loramerge.flushBytes", Long.toString(8L << 30));
        assertEquals(8L << 30, Tuning.current().flushBytes(), "past 2^31");
        System.setProperty("loramerge.flushBytes", "4096");
        assertTrue(Tuning.current().describe().endsWith(", a flush every 4096 bytes"), Tuning.current().describe());
    }

    @Test
    void aBlockTooSmallForAnyRowIsRefusedByName() {
        System.setProperty("loramerge.blockBytes", "4096");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, Tuning::current);
        assertTrue(e.getMessage().startsWith("-Dloramerge.blockBytes=4096: expected a whole number from 1048576"), e.getMessage());
    }

    @Test
    void aStreamCountThatIsNotANumberIsRefusedByName() {
        System.setProperty("loramerge.streams", "many");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, Tuning::current);
        assertTrue(e.getMessage().startsWith("-Dloramerge.streams=many"), e.getMessage());
    }
}
