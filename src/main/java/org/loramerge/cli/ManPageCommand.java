package org.loramerge.cli;

import java.io.PrintStream;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Callable;
import org.loramerge.errors.ExitCode;
import org.loramerge.format.ToolVersion;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Model.OptionSpec;

/**
 * {@code loramerge generate-manpage}: the man page (roff, section 1) made from the same command
 * model as {@code --help}, so the two never disagree. Hidden: scripts/install.sh runs it.
 */
@Command(name = "generate-manpage", hidden = true, description = "Prints the loramerge(1) man page (roff) on stdout.")
final class ManPageCommand implements Callable<Integer> {
    @Override
    public Integer call() {
        System.out.print(render(Main.commandLine()));
        System.out.flush();
        return 0;
    }

    static String render(CommandLine root) {
        StringBuilder sb = new StringBuilder();
        CommandSpec spec = root.getCommandSpec();
        sb.append(".TH LORAMERGE 1 \"\" \"loramerge ").append(ToolVersion.get()).append("\" \"User Commands\"\n");
        sb.append(".SH NAME\nloramerge \\- ").append(text(String.join(" ", spec.usageMessage().description()))).append('\n');
        sb.append(".SH SYNOPSIS\n");
        for (Map.Entry<String, CommandLine> e : root.getSubcommands().entrySet()) {
            if (visible(e.getValue())) {
                sb.append(".B loramerge ").append(e.getKey()).append("\n[\\fIOPTIONS\\fR]\n.br\n");
            }
        }
        sb.append(".SH COMMANDS\n");
        for (Map.Entry<String, CommandLine> e : root.getSubcommands().entrySet()) {
            CommandLine sub = e.getValue();
            if (!visible(sub) || e.getKey().equals("help")) {
                continue;
            }
            CommandSpec s = sub.getCommandSpec();
            sb.append(".SS ").append(e.getKey()).append('\n');
            sb.append(text(String.join(" ", s.usageMessage().description()))).append('\n');
            for (CommandLine.Model.PositionalParamSpec p : s.positionalParameters()) {
                sb.append(".TP\n.I ").append(text(p.paramLabel())).append('\n').append(text(String.join(" ", p.description()))).append('\n');
            }
            for (OptionSpec o : s.options()) {
                if (o.hidden()) {
                    continue;
                }
                sb.append(".TP\n.B ").append(text(String.join(", ", o.names())));
                if (o.arity().max() > 0 && !o.paramLabel().isEmpty()) {
                    sb.append(" \\fI").append(text(o.paramLabel())).append("\\fR");
                }
                sb.append('\n').append(text(String.join(" ", o.description()).replace("${DEFAULT-VALUE}", String.valueOf(o.defaultValue()))))
                        .append('\n');
            }
        }
        sb.append(".SH EXIT STATUS\n");
        for (ExitCode c : ExitCode.values()) {
            sb.append(".TP\n.B ").append(c.code()).append('\n').append(c.name().toLowerCase(Locale.ROOT).replace('_', ' ')).append('\n');
        }
        sb.append(".SH SEE ALSO\nThe README and docs/ of the loramerge source tree; \\fBloramerge COMMAND \\-\\-help\\fR.\n");
        return sb.toString();
    }

    private static boolean visible(CommandLine c) {
        return !c.getCommandSpec().usageMessage().hidden();
    }

    /** Text for roff: backslashes escaped, hyphens as \-, and no line starting with a control character. */
    static String text(String s) {
        String t = s.replace("\\", "\\e").replace("-", "\\-");
        StringBuilder out = new StringBuilder();
        for (String line : t.split("\n", -1)) {
            if (out.length() > 0) {
                out.append('\n');
            }
            if (line.startsWith(".") || line.startsWith("'")) {
                out.append("\\&");
            }
            out.append(line);
        }
        return out.toString();
    }
}
