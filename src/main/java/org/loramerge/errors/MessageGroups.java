package org.loramerge.errors;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Messages that repeat per module, gathered into one line per kind: an adapter for another model
 * fails on every one of its modules with the same hint (224 lines for a 7B all-linear adapter), and
 * a GPT-2 adapter without fan_in_fan_out warns once per Conv1D layer. A kind met once keeps its
 * message as it is; a kind met n times prints its first message, the count and the next few
 * subjects, so the user sees what is wrong, how often, and an example to look at.
 */
public final class MessageGroups {
    /** Subjects listed after the first message of a group. */
    static final int LISTED = 3;

    private final Map<String, Group> groups = new LinkedHashMap<>();

    private static final class Group {
        final String first;
        final List<String> subjects = new ArrayList<>();

        Group(String first) {
            this.first = first;
        }
    }

    /**
     * Adds {@code message} about {@code subject} (a module or tensor name) to the group {@code kind};
     * messages of one kind must differ only in their subject.
     */
    public void add(String kind, String subject, String message) {
        groups.computeIfAbsent(kind, k -> new Group(message)).subjects.add(subject);
    }

    public boolean isEmpty() {
        return groups.isEmpty();
    }

    /** One line per kind, in the order the kinds were first met. */
    public List<String> lines() {
        List<String> out = new ArrayList<>();
        for (Group g : groups.values()) {
            int n = g.subjects.size();
            if (n == 1) {
                out.add(g.first);
                continue;
            }
            List<String> more = g.subjects.subList(1, Math.min(n, 1 + LISTED));
            out.add(g.first + " [the same for " + (n - 1) + " more, " + n + " in all: " + String.join(", ", more)
                    + (n - 1 > LISTED ? ", ..." : "") + "]");
        }
        return out;
    }
}
