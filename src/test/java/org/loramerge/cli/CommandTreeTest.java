package org.loramerge.cli;

import java.util.List;
import java.util.Set;
import org.junit.jupiter.api.Test;
import picocli.CommandLine;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A command line that names a command gets that command alone (picocli's start is most of a short
 * run's), and it is the same command, with the same help, as in the whole tree; anything else gets the whole tree.
 */
class CommandTreeTest {
    private static final List<String> ALONE = List.of("merge", "combine", "batch", "verify", "inspect", "quantize", "extract", "unmerge");

    @Test
    void eachCommandAloneIsTheCommandOfTheWholeTree() {
        CommandLine whole = Main.commandLine();
        for (String name : ALONE) {
            CommandLine alone = Main.commandLine(name, "--help");
            assertEquals(Set.of(name), alone.getSubcommands().keySet(), name);
            CommandLine a = alone.getSubcommands().get(name);
            CommandLine w = whole.getSubcommands().get(name);
            assertEquals(w.getUsageMessage(CommandLine.Help.Ansi.OFF), a.getUsageMessage(CommandLine.Help.Ansi.OFF), name + "'s help");
            assertEquals(w.getCommandSpec().qualifiedName(), a.getCommandSpec().qualifiedName());
        }
    }

    @Test
    void helpTheCompletionScriptAndUnknownWordsGetTheWholeTree() {
        int all = Main.commandLine().getSubcommands().size();
        for (String[] args : List.of(new String[] {}, new String[] {"--help"}, new String[] {"help", "merge"}, new String[] {"mrege"},
                new String[] {"generate-completion"}, new String[] {"--version"})) {
            assertEquals(all, Main.commandLine(args).getSubcommands().size(), String.join(" ", args));
        }
        assertTrue(Main.commandLine().getSubcommands().keySet().containsAll(ALONE));
    }
}
