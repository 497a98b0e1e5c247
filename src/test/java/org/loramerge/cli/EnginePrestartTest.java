package org.loramerge.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.Test;

/** Which runs start the GPU driver before the command line is parsed (Main.prestartEngine). */
class EnginePrestartTest {
    @Test
    void aMergeWithoutDeviceStartsTheDefaultAutoEngine() {
        assertEquals("auto", Main.prestartDevice(new String[] {"merge", "--base", "b", "--adapter", "a", "--out", "o"}));
    }

    @Test
    void theDeviceOptionIsReadInBothSpellings() {
        assertEquals("cuda:1", Main.prestartDevice(new String[] {"merge", "--device", "cuda:1", "--base", "b"}));
        assertEquals("cuda", Main.prestartDevice(new String[] {"extract", "--device=cuda", "--base", "b"}));
    }

    @Test
    void aCpuRunHelpAndOtherCommandsStartNothing() {
        assertNull(Main.prestartDevice(new String[] {"merge", "--device", "cpu", "--base", "b"}));
        assertNull(Main.prestartDevice(new String[] {"combine", "--device=CPU"}));
        assertNull(Main.prestartDevice(new String[] {"merge", "--help"}));
        assertNull(Main.prestartDevice(new String[] {"inspect", "model"}));
        assertNull(Main.prestartDevice(new String[] {"--version"}));
        assertNull(Main.prestartDevice(new String[] {}));
    }

    @Test
    void aNameTheEngineWouldRefuseIsLeftToTheParsedOptions() {
        // Backends.prestart ignores it; Backends.open then says what is wrong with it
        assertEquals("gpu", Main.prestartDevice(new String[] {"merge", "--device", "gpu"}));
    }
}
