package org.loramerge.adapter;

import com.google.re2j.Matcher;
import com.google.re2j.Pattern;
import com.google.re2j.PatternSyntaxException;
import java.util.ArrayDeque;
import java.util.Deque;

/**
 * A regular expression of {@code adapter_config.json}, written for Python's {@code re} (PEFT matches
 * target_modules, exclude_modules, rank_pattern, alpha_pattern and layers_pattern with it), matched
 * here by RE2/J, whose time grows linearly with the name's length and the pattern's size whatever
 * the pattern: {@code (a|a?)+x} or {@code (.*){1,999}[bc]}, which keep a backtracking matcher busy
 * for hours, take microseconds to milliseconds per module name.
 *
 * <p>The Python pattern is translated token by token (Python's sre_parse.py is the reference):
 * <ul>
 * <li>refused, with the reason: backreferences ({@code \1}, {@code (?P=name)}), lookaround, atomic
 *     groups, possessive quantifiers and conditionals, which no linear-time matcher runs; the
 *     verbose and ASCII flags; every construct Python itself rejects (escapes such as {@code \p} or
 *     {@code \z}, a global flag after the start, {@code (?<name>...)}, nothing to repeat), so that a
 *     pattern PEFT cannot load is not merged either; counted repetitions over 1000 (RE2's limit);
 *     patterns whose compiled program would exceed {@link #MAX_SIZE} instructions
 *     ({@code ((a{1000}){1000}){1000}} would take gigabytes) or whose groups nest deeper than
 *     {@link #MAX_DEPTH}.</li>
 * <li>rewritten to mean what Python means: {@code \d \w \s} and their negations to the Unicode
 *     classes of Python's str patterns (RE2's are ASCII); {@code \Z} to {@code \z}; {@code {,n}} to
 *     {@code {0,n}} (a literal in RE2); Python's 4- and 8-digit Unicode escapes, {@code \N{NAME}}
 *     and octal escapes; {@code [} inside a set is a literal (RE2 reads {@code [[:alpha:]]} as a POSIX class);
 *     {@code [\b]} is a backspace; {@code (?#...)} comments are dropped.</li>
 * <li>left as RE2 has them: {@code \b} and {@code \B} see ASCII word characters (Python's see
 *     Unicode ones), and {@code $} matches only at the very end (Python's also before a final
 *     newline). They differ only on module names with non-ASCII letters or a newline, which PyTorch
 *     module paths do not have.</li>
 * </ul>
 */
final class PeftRegex {
    /** The largest program one pattern may compile to, counted as RE2 expands counted repetitions. */
    static final int MAX_SIZE = 10_000;
    /** RE2: a counted repetition {@code {m,n}} takes at most 1000. */
    static final int MAX_REPEAT = 1000;
    /** Groups nested deeper are refused: RE2/J compiles recursively and runs out of stack at a few thousand. */
    static final int MAX_DEPTH = 200;

    /** Python's {@code \w} for str patterns: letters, numbers (str.isalnum) and the underscore. */
    private static final String WORD = "\\p{L}\\p{N}_";
    /** Python's {@code \s} for str patterns (str.isspace): ASCII 9-13 and 28-32, NEL, and Unicode separators. */
    private static final String SPACE = "\\x{9}-\\x{d}\\x{1c}-\\x{20}\\x{85}\\p{Z}";

    /** A pattern refused, with the reason in words. */
    static final class Refused extends Exception {
        private static final long serialVersionUID = 1L;

        Refused(String reason) {
            super(reason);
        }
    }

    private final String python;
    private final Pattern pattern;
    private final int size;

    private PeftRegex(String python, Pattern pattern, int size) {
        this.python = python;
        this.pattern = pattern;
        this.size = size;
    }

    /** Compiles a whole Python pattern, as {@code re.fullmatch(pattern, name)} sees it. */
    static PeftRegex compile(String python) throws Refused {
        return compile("", python, "");
    }

    /**
     * Compiles {@code prefix + key + suffix}, the way PEFT builds a pattern around a key with an
     * f-string (so a key with an unbalanced parenthesis changes the whole pattern there too). A
     * global flag in the key is not at the start of the pattern, which Python 3.11 rejects.
     */
    static PeftRegex compile(String prefix, String key, String suffix) throws Refused {
        String python = prefix + key + suffix;
        Translator t = new Translator(python, prefix.length());
        String re2 = t.run();
        try {
            return new PeftRegex(python, Pattern.compile(re2), t.size());
        } catch (PatternSyntaxException e) {
            throw new Refused("RE2/J cannot compile it (" + e.getDescription() + ")");
        }
    }

    /** Whether the whole name matches: Python's {@code re.fullmatch}. */
    boolean fullMatch(String name) {
        return pattern.matcher(name).matches();
    }

    /** Whether a match starts at the beginning of the name: Python's {@code re.match}. */
    boolean matchesAtStart(String name) {
        return pattern.matcher(name).lookingAt();
    }

    /** Group {@code group} of a match at the start of the name, or null when there is none. */
    String groupAtStart(String name, int group) {
        Matcher m = pattern.matcher(name);
        return m.lookingAt() ? m.group(group) : null;
    }

    /** Instructions of the compiled program, as counted for {@link #MAX_SIZE}. */
    int size() {
        return size;
    }

    @Override
    public String toString() {
        return python;
    }

    /** One pass over a Python pattern that writes the RE2 pattern and counts the program's size. */
    private static final class Translator {
        private final String p;
        /** Where the user's text starts in {@code p}: positions in messages count from there. */
        private final int base;
        private final StringBuilder out = new StringBuilder();
        /** Size so far of each open group, the whole pattern at the bottom. */
        private final Deque<long[]> groups = new ArrayDeque<>();
        /** Size of the last item, which a quantifier would repeat; -1 where there is nothing to repeat. */
        private long last = -1;
        private int i;
        /** True while nothing but global flag groups has been read: where Python allows a global flag. */
        private boolean atStart = true;

        Translator(String p, int base) {
            this.p = p;
            this.base = base;
            groups.push(new long[] {0});
        }

        private String at(int index) {
            return " at position " + (index - base);
        }

        int size() {
            return (int) groups.peek()[0];
        }

        String run() throws Refused {
            while (i < p.length()) {
                char c = p.charAt(i);
                boolean flagsOnly = false;
                switch (c) {
                    case '\\': escape(); break;
                    case '[': set(); break;
                    case '(': flagsOnly = group(); break;
                    case ')': close(); break;
                    case '*': case '+': case '?': i++; repeat(String.valueOf(c), 1); break;
                    case '{': brace(); break;
                    case '|': out.append('|'); i++; last = -1; break;
                    case '^': case '$': out.append(c); i++; anchor(); break;
                    case '.': out.append('.'); i++; item(1); break;
                    default: {
                        int cp = p.codePointAt(i);
                        i += Character.charCount(cp);
                        literal(cp);
                    }
                }
                atStart &= flagsOnly;
                if (groups.peek()[0] > MAX_SIZE) {
                    throw new Refused("it expands to more than " + MAX_SIZE + " instructions (counted repetitions multiply what they repeat); "
                            + "a pattern that picks module names needs far fewer");
                }
            }
            if (groups.size() > 1) {
                throw new Refused("a parenthesis is not closed (Python: missing ), unterminated subpattern)");
            }
            return out.toString();
        }

        private void item(long size) {
            groups.peek()[0] += size;
            last = size;
        }

        private void anchor() {
            groups.peek()[0] += 1;
            last = -1; // Python: nothing to repeat
        }

        private void literal(int cp) {
            out.append(quote(cp));
            item(1);
        }

        /** A code point as an RE2 literal, inside or outside a set. */
        private static String quote(int cp) {
            if (cp < 0x80 && Character.isLetterOrDigit(cp)) {
                return String.valueOf((char) cp);
            }
            if (cp > 0x20 && cp < 0x7f) {
                return "\\" + (char) cp; // RE2: any ASCII punctuation may be escaped
            }
            return "\\x{" + Integer.toHexString(cp) + "}";
        }

        /** A quantifier just read (and written as {@code re2}) over the last item, repeated up to {@code copies} times. */
        private void repeat(String re2, long copies) throws Refused {
            if (last < 0) {
                throw new Refused("a quantifier" + at(i - 1) + " has nothing to repeat (Python rejects it too)");
            }
            out.append(re2);
            groups.peek()[0] += last * (copies - 1) + 1;
            last = -1; // Python: multiple repeat
            if (i < p.length() && p.charAt(i) == '?') {
                out.append('?');
                i++;
            } else if (i < p.length() && p.charAt(i) == '+') {
                throw new Refused("the possessive quantifier " + re2 + "+ needs backtracking control that no linear-time matcher has; drop the +");
            }
        }

        /** {@code {m,n}} and its Python forms {@code {,n}} and {@code {,}}; anything else is a literal brace, as in Python. */
        private void brace() throws Refused {
            int j = i + 1;
            int loStart = j;
            while (j < p.length() && isAsciiDigit(p.charAt(j))) {
                j++;
            }
            String lo = p.substring(loStart, j);
            String hi = null;
            if (j < p.length() && p.charAt(j) == ',') {
                int hiStart = ++j;
                while (j < p.length() && isAsciiDigit(p.charAt(j))) {
                    j++;
                }
                hi = p.substring(hiStart, j);
            }
            boolean quantifier = j < p.length() && p.charAt(j) == '}' && !(lo.isEmpty() && hi == null);
            if (!quantifier) {
                i++;
                literal('{');
                return;
            }
            i = j + 1;
            long min = lo.isEmpty() ? 0 : count(lo);
            long max = hi == null ? min : hi.isEmpty() ? -1 : count(hi);
            if (max >= 0 && min > max) {
                throw new Refused("{" + lo + "," + hi + "} repeats at least more often than at most (Python: min repeat greater than max repeat)");
            }
            String re2 = "{" + min + (hi == null ? "" : "," + (max < 0 ? "" : String.valueOf(max))) + "}";
            repeat(re2, max < 0 ? min + 1 : Math.max(max, 1));
        }

        private static long count(String digits) throws Refused {
            if (digits.length() > 4 || Integer.parseInt(digits) > MAX_REPEAT) {
                throw new Refused("the counted repetition {" + digits + "} is over " + MAX_REPEAT
                        + ", the most RE2 allows (such a count only makes the pattern slow); use * or + instead");
            }
            return Integer.parseInt(digits);
        }

        private static boolean isAsciiDigit(char c) {
            return c >= '0' && c <= '9';
        }

        private static boolean isOctal(char c) {
            return c >= '0' && c <= '7';
        }

        /** {@code (}: a group, or one of Python's {@code (?...)} extensions. Returns true for a global flag group. */
        private boolean group() throws Refused {
            if (!p.startsWith("(?", i)) {
                out.append('(');
                i++;
                open();
                return false;
            }
            if (i + 2 >= p.length()) {
                throw new Refused("the pattern ends inside (? (Python: unexpected end of pattern)");
            }
            char k = p.charAt(i + 2);
            switch (k) {
                case ':':
                    out.append("(?:");
                    i += 3;
                    open();
                    return false;
                case 'P':
                    if (p.startsWith("(?P<", i)) {
                        int end = p.indexOf('>', i + 4);
                        String name = end < 0 ? "" : p.substring(i + 4, end);
                        if (end < 0 || name.isEmpty() || !Character.isJavaIdentifierStart(name.codePointAt(0))
                                || !name.codePoints().allMatch(cp -> cp == '_' || Character.isLetterOrDigit(cp))) {
                            throw new Refused("the named group" + at(i) + " has no valid name (Python rejects it too)");
                        }
                        out.append("(?P<").append(name).append('>');
                        i = end + 1;
                        open();
                        return false;
                    }
                    if (p.startsWith("(?P=", i)) {
                        throw backreference("(?P=name)");
                    }
                    throw new Refused("(?P" + at(i) + " is neither (?P<name>...) nor (?P=name) (Python rejects it too)");
                case '=': case '!':
                    throw lookaround("(?" + k);
                case '<':
                    if (p.startsWith("(?<=", i) || p.startsWith("(?<!", i)) {
                        throw lookaround(p.substring(i, i + 4));
                    }
                    throw new Refused("(?<" + at(i) + " is not Python syntax (a named group is (?P<name>...))");
                case '#': {
                    int end = p.indexOf(')', i);
                    if (end < 0) {
                        throw new Refused("the comment (?#... is not closed (Python: missing ), unterminated comment)");
                    }
                    i = end + 1; // Python drops the comment as if it were not there, quantifiers included
                    return atStart;
                }
                case '(':
                    throw new Refused("the conditional group (?(...)...)" + at(i)
                            + " depends on what a group matched, which no linear-time matcher can follow; rewrite it as an alternation");
                case '>':
                    throw new Refused("the atomic group (?>...)" + at(i) + " needs backtracking control that no linear-time matcher has; use (?:...)");
                default:
                    return flags();
            }
        }

        /** {@code (?flags)}, {@code (?flags:...)} or {@code (?flags-flags:...)}. */
        private boolean flags() throws Refused {
            int start = i;
            int j = i + 2;
            StringBuilder on = new StringBuilder();
            StringBuilder off = new StringBuilder();
            StringBuilder into = on;
            while (j < p.length() && p.charAt(j) != ':' && p.charAt(j) != ')') {
                char f = p.charAt(j++);
                if (f == '-' && into == on) {
                    into = off;
                    continue;
                }
                switch (f) {
                    case 'i': case 'm': case 's':
                        into.append(f);
                        break;
                    case 'u':
                        break; // Unicode matching: Python's default for str patterns, and the translation's
                    case 'x':
                        throw new Refused("the verbose flag (?x) is not supported; write the pattern without spaces and comments");
                    case 'a': case 'L':
                        throw new Refused("the flag (?" + f + ") (ASCII or locale classes) is not supported; write the classes out, e.g. [0-9] for \\d");
                    default:
                        throw new Refused("(?" + f + at(start) + " is not a flag or extension Python knows (Python rejects it too)");
                }
            }
            if (j >= p.length()) {
                throw new Refused("the flag group" + at(start) + " is not closed (Python: missing -, : or ))");
            }
            if (p.charAt(j) == ')') {
                if (into == off) {
                    throw new Refused("(?-...)" + at(start) + " turns flags off without a scope (Python: missing :)");
                }
                if (!atStart) {
                    throw new Refused("the global flag group " + p.substring(start, j + 1) + " is not at the start of the pattern, which Python 3.11 rejects"
                            + " (PEFT wraps rank_pattern and alpha_pattern keys in (.*\\.)?(KEY)$); scope it instead: (?" + on + ":...)");
                }
                if (on.length() > 0) {
                    out.append("(?").append(on).append(')');
                }
                i = j + 1;
                return true;
            }
            out.append("(?").append(on).append(off.length() > 0 ? "-" + off : "").append(':');
            i = j + 1;
            open();
            return false;
        }

        private void open() throws Refused {
            if (groups.size() > MAX_DEPTH) {
                throw new Refused("its groups nest more than " + MAX_DEPTH + " deep" + at(i) + "; a pattern that picks module names needs far fewer");
            }
            groups.push(new long[] {0});
            last = -1;
        }

        private void close() throws Refused {
            if (groups.size() == 1) {
                throw new Refused("the )" + at(i) + " closes no group (Python: unbalanced parenthesis)");
            }
            long size = groups.pop()[0] + 1;
            out.append(')');
            i++;
            item(size);
        }

        private Refused backreference(String form) {
            return new Refused("the backreference " + form + at(i)
                    + " makes a match depend on an earlier one, which no linear-time matcher can do; write the alternatives out");
        }

        private Refused lookaround(String form) {
            return new Refused("the lookaround " + form + "...)" + at(i)
                    + " is not supported by linear-time matching (RE2); express the condition with target_modules/exclude_modules or a plainer pattern");
        }

        /** A backslash escape outside a set. */
        private void escape() throws Refused {
            if (i + 1 >= p.length()) {
                throw new Refused("the pattern ends with a lone backslash (Python: bad escape (end of pattern))");
            }
            char e = p.charAt(i + 1);
            int at = i;
            i += 2;
            switch (e) {
                case 'A': out.append("\\A"); anchor(); return;
                case 'Z': out.append("\\z"); anchor(); return;
                case 'b': out.append("\\b"); anchor(); return;
                case 'B': out.append("\\B"); anchor(); return;
                case 'd': out.append("\\p{Nd}"); item(1); return;
                case 'D': out.append("\\P{Nd}"); item(1); return;
                case 'w': out.append('[').append(WORD).append(']'); item(1); return;
                case 'W': out.append("[^").append(WORD).append(']'); item(1); return;
                case 's': out.append('[').append(SPACE).append(']'); item(1); return;
                case 'S': out.append("[^").append(SPACE).append(']'); item(1); return;
                default:
                    break;
            }
            if (isAsciiDigit(e) && e != '0'
                    && !(isOctal(e) && i + 1 < p.length() && isOctal(p.charAt(i)) && isOctal(p.charAt(i + 1)))) {
                i = at;
                throw backreference("\\" + e);
            }
            i = at;
            literal(charEscape(false));
        }

        /**
         * The code point of a character escape at {@code i} (a backslash), inside a set or not:
         * control characters, hex, Unicode, named and octal escapes, and escaped punctuation.
         */
        private int charEscape(boolean inSet) throws Refused {
            int at = i;
            char e = p.charAt(i + 1);
            i += 2;
            switch (e) {
                case 'a': return 7;
                case 'f': return '\f';
                case 'n': return '\n';
                case 'r': return '\r';
                case 't': return '\t';
                case 'v': return 0x0b;
                case 'x': return hex(at, 2);
                case 'u': return hex(at, 4);
                case 'U': return hex(at, 8);
                case 'N': {
                    int end = p.indexOf('}', i);
                    if (!p.startsWith("{", i) || end < 0) {
                        throw new Refused("\\N" + at(at) + " is not \\N{NAME} (Python: missing {)");
                    }
                    String name = p.substring(i + 1, end);
                    i = end + 1;
                    try {
                        return Character.codePointOf(name);
                    } catch (IllegalArgumentException x) {
                        throw new Refused("\\N{" + name + "} names no Unicode character (Python: undefined character name)");
                    }
                }
                default:
                    break;
            }
            if (inSet && e == 'b') {
                return 8; // Python: [\b] is a backspace
            }
            if (isOctal(e)) {
                // Python: \0 takes up to two more octal digits; \1.. is octal only with three digits
                int value = e - '0';
                int digits = 1;
                while (digits < 3 && i < p.length() && isOctal(p.charAt(i))) {
                    value = value * 8 + (p.charAt(i++) - '0');
                    digits++;
                }
                if (value > 0377) {
                    throw new Refused("the octal escape" + at(at) + " is over \\377 (Python rejects it too)");
                }
                return value;
            }
            if (e < 0x80 && Character.isLetterOrDigit(e)) {
                throw new Refused("\\" + e + at(at) + " is not an escape Python knows (Python: bad escape \\" + e + "); "
                        + "write the character itself or a Python escape");
            }
            i = at + 1;
            int cp = p.codePointAt(i);
            i += Character.charCount(cp);
            return cp;
        }

        private int hex(int at, int digits) throws Refused {
            if (i + digits > p.length()) {
                throw new Refused("the escape" + at(at) + " needs " + digits + " hex digits (Python: incomplete escape)");
            }
            String h = p.substring(i, i + digits);
            for (int k = 0; k < h.length(); k++) {
                if (Character.digit(h.charAt(k), 16) < 0 || h.charAt(k) > 0x7f) {
                    throw new Refused("the escape" + at(at) + " needs " + digits + " hex digits (Python: incomplete escape)");
                }
            }
            i += digits;
            long v = Long.parseLong(h, 16);
            if (v > Character.MAX_CODE_POINT) {
                throw new Refused("the escape" + at(at) + " is beyond Unicode (Python: bad escape)");
            }
            return (int) v;
        }

        /** A set {@code [...]}: one item. */
        private void set() throws Refused {
            int start = i;
            out.append('[');
            i++;
            if (i < p.length() && p.charAt(i) == '^') {
                out.append('^');
                i++;
            }
            boolean first = true;
            while (true) {
                if (i >= p.length()) {
                    throw new Refused("the set [" + at(start) + " is not closed (Python: unterminated character set)");
                }
                char c = p.charAt(i);
                if (c == ']' && !first) {
                    out.append(']');
                    i++;
                    break;
                }
                first = false;
                if (c == '\\') {
                    setEscape();
                } else if (c == '-') {
                    out.append('-');
                    i++;
                } else {
                    int cp = p.codePointAt(i);
                    i += Character.charCount(cp);
                    out.append(quote(cp)); // '[' and ']' become literals, as in Python
                }
            }
            item(1);
        }

        private void setEscape() throws Refused {
            if (i + 1 >= p.length()) {
                throw new Refused("the pattern ends with a lone backslash (Python: bad escape (end of pattern))");
            }
            char e = p.charAt(i + 1);
            switch (e) {
                case 'd': out.append("\\p{Nd}"); i += 2; return;
                case 'D': out.append("\\P{Nd}"); i += 2; return;
                case 'w': out.append(WORD); i += 2; return;
                case 's': out.append(SPACE); i += 2; return;
                case 'W': case 'S':
                    throw new Refused("\\" + e + " inside [...]" + at(i) + " cannot be written for RE2 (a set cannot hold a negated Unicode class); "
                            + "use [^...] with \\" + Character.toLowerCase(e) + " instead");
                case 'A': case 'Z': case 'B':
                    throw new Refused("\\" + e + " inside [...]" + at(i) + " is not a character (Python: bad escape \\" + e + ")");
                default:
                    break;
            }
            if (e == '8' || e == '9') {
                throw new Refused("\\" + e + " inside [...]" + at(i) + " is not an escape (Python: bad escape \\" + e + ")");
            }
            out.append(quote(charEscape(true)));
        }
    }

}
