package org.loramerge.adapter;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTimeoutPreemptively;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * Python regular expressions of adapter_config.json as loramerge matches them: in linear time,
 * meaning what Python's re means, and refused with a reason where that cannot be done.
 */
class PeftRegexTest {
    private static final String NAME = "model.layers.0.self_attn.q_proj";
    /** get_pattern_key's wrapper, as AdapterConfig applies it. */
    private static final String KEY_PREFIX = "(.*\\.)?(";
    private static final String KEY_SUFFIX = ")$";

    private static PeftRegex key(String key) throws PeftRegex.Refused {
        return PeftRegex.compile(KEY_PREFIX, key, KEY_SUFFIX);
    }

    private static String refusal(String pattern) {
        return assertThrows(PeftRegex.Refused.class, () -> PeftRegex.compile(pattern), pattern).getMessage();
    }

    @ParameterizedTest
    @ValueSource(strings = {"(.*){1,999}[bc]", "(.*?){20}[bc]", "(a|a?)+x", "((.*)*)*z", "(\\w|\\w\\w)+!", "(.{0,100}){1,10}z"})
    void patternsThatMakeABacktrackingMatcherRunForHoursMatchInMilliseconds(String hostile) {
        // java.util.regex needs longer than the age of the universe for the first two against NAME
        assertTimeoutPreemptively(Duration.ofSeconds(5), () -> {
            PeftRegex p = key(hostile);
            for (int i = 0; i < 200; i++) {
                assertFalse(p.matchesAtStart(NAME + i));
            }
        });
    }

    @Test
    void repetitionCountsOverRe2sLimitAreRefusedAtOnce() {
        String why = assertTimeoutPreemptively(Duration.ofSeconds(5), () -> refusal("(.*){1,32000}[bc]"));
        assertTrue(why.contains("{32000}") || why.contains("32000"), why);
        assertTrue(why.contains("1000"), why);
    }

    @Test
    void nestedRepetitionsThatWouldExpandToGigabytesAreRefused() {
        String why = assertTimeoutPreemptively(Duration.ofSeconds(5), () -> refusal("((a{1000}){1000}){1000}"));
        assertTrue(why.contains("instructions"), why);
    }

    @Test
    void groupsNestedThousandsDeepAreRefusedRatherThanOverflowingTheStack() {
        String why = refusal("(".repeat(3000) + "q_proj" + ")".repeat(3000));
        assertTrue(why.contains("nest"), why);
    }

    @ParameterizedTest
    @CsvSource(delimiter = '|', value = {
            "(a)\\1                | backreference",
            "(?P<x>a)(?P=x)        | backreference",
            "q(?=_proj)            | lookaround",
            "q(?!_proj)            | lookaround",
            "(?<=attn\\.)q_proj    | lookaround",
            "(?<!mlp\\.)q_proj     | lookaround",
            "(?>q)_proj            | atomic",
            "q*+_proj              | possessive",
            "(a)?(?(1)b)c          | conditional",
            "(?x) q _proj          | verbose",
            "\\p{L}+               | bad escape",
            "q_proj\\z             | bad escape",
            "(?<n>q)_proj          | not Python syntax",
            "*q                    | nothing to repeat",
            "(q_proj               | not closed",
            "q_proj)               | closes no group",
            "[q_proj               | not closed",
            "q{3,2}                | min repeat greater than max",
            "[\\W.]                | negated",
    })
    void constructsThatCannotBeMatchedInLinearTimeOrThatPythonRejectsAreRefusedWithTheReason(String pattern, String reason) {
        String why = refusal(pattern);
        assertTrue(why.contains(reason), () -> pattern + ": " + why);
    }

    @Test
    void aGlobalFlagInsideARankPatternKeyIsRefusedAsPython311DoesAndAtTheStartOfAStringTargetItWorks() throws Exception {
        String why = assertThrows(PeftRegex.Refused.class, () -> key("(?i)Q_PROJ")).getMessage();
        assertTrue(why.contains("(?i:"), why);
        assertTrue(PeftRegex.compile("(?i).*Q_PROJ").fullMatch(NAME));
        assertTrue(key("(?i:Q_PROJ)").matchesAtStart(NAME));
    }

    @Test
    void fullMatchIsPythonsFullmatchAndMatchesAtStartIsPythonsMatch() throws Exception {
        assertFalse(PeftRegex.compile("q_proj").fullMatch(NAME));
        assertTrue(PeftRegex.compile(".*q_proj").fullMatch(NAME));
        assertTrue(PeftRegex.compile("model").matchesAtStart(NAME));
        assertFalse(PeftRegex.compile("layers").matchesAtStart(NAME));
        assertTrue(key("q_proj").matchesAtStart(NAME));
        assertFalse(key("attn.q_proj").matchesAtStart("model.layers.0.self_attn_q_proj"), "the key ends on a dot boundary");
    }

    @Test
    void aKeyWithAnUnbalancedParenthesisChangesTheWrappedPatternAsInPython() throws Exception {
        // Python: re.match(r"(.*\.)?(k_proj)|(q_proj)$", name): the first branch matches any name that starts with
        // k_proj or has it after a dot, the second only the bare name q_proj
        PeftRegex p = key("k_proj)|(q_proj");
        assertTrue(p.matchesAtStart("k_proj.anything"));
        assertTrue(p.matchesAtStart("model.k_proj.anything"));
        assertTrue(p.matchesAtStart("q_proj"));
        assertFalse(p.matchesAtStart(NAME));
    }

    @Test
    void pythonsShortRepetitionFormsMeanWhatTheyMeanInPython() throws Exception {
        assertTrue(PeftRegex.compile("a{,3}b").fullMatch("aab"), "{,3} is {0,3} in Python (a literal in RE2)");
        assertTrue(PeftRegex.compile("a{,3}b").fullMatch("b"));
        assertFalse(PeftRegex.compile("a{,3}b").fullMatch("aaaab"));
        assertTrue(PeftRegex.compile("a{,}b").fullMatch("aaaaab"));
        assertTrue(PeftRegex.compile("a{}").fullMatch("a{}"), "{} is a literal in Python");
        assertTrue(PeftRegex.compile("a{x").fullMatch("a{x"));
    }

    @Test
    void pythonsUnicodeClassesKeepTheirMeaning() throws Exception {
        assertTrue(PeftRegex.compile("layers\\.\\d+").fullMatch("layers.\u0663"), "Python's \\d is any decimal digit (ARABIC-INDIC THREE)");
        assertTrue(PeftRegex.compile("\\w+").fullMatch("\u00e9t\u00e9_2"), "Python's \\w takes Unicode letters");
        assertFalse(PeftRegex.compile("\\W").fullMatch("\u00e9"));
        assertTrue(PeftRegex.compile("[\\w.]+").fullMatch("caf\u00e9.q_proj"));
        assertTrue(PeftRegex.compile("a\\sb").fullMatch("a\u00a0b"), "Python's \\s takes a no-break space");
        assertTrue(PeftRegex.compile("a\\sb").fullMatch("a\u000bb"), "and a vertical tab, which RE2's \\s does not");
        assertFalse(PeftRegex.compile("\\S").fullMatch("\u2003"));
    }

    @Test
    void pythonEscapesAndSetsMeanWhatTheyMeanInPython() throws Exception {
        assertTrue(PeftRegex.compile("q_proj\\Z").fullMatch("q_proj"));
        assertTrue(PeftRegex.compile("\\101\\x42\\u0043\\U00000044\\N{LATIN SMALL LETTER E}\\0").fullMatch("ABCDe\0"));
        assertTrue(PeftRegex.compile("[[:a]+").fullMatch("[:a:"), "[ in a set is a literal in Python, not a POSIX class");
        assertFalse(PeftRegex.compile("[[:alpha:]]").fullMatch("x"));
        assertTrue(PeftRegex.compile("[\\b]").fullMatch("\b"), "[\\b] is a backspace");
        assertTrue(PeftRegex.compile("[]a]+").fullMatch("]a]"), "a ] first in a set is a literal");
        assertTrue(PeftRegex.compile("q(?#the query)_proj").fullMatch("q_proj"), "(?#...) is a comment");
        assertTrue(PeftRegex.compile("(?P<proj>[qk])_proj").fullMatch("k_proj"));
        assertTrue(PeftRegex.compile("\\.\\$\\(\\)").fullMatch(".$()"));
        assertTrue(PeftRegex.compile("caf\\\u00e9").fullMatch("caf\u00e9"), "an escaped non-ASCII letter is itself");
    }

    @Test
    void theLayerIndexGroupIsReadLikePeftsMatch() throws Exception {
        PeftRegex p = PeftRegex.compile("(?:^|.*?\\.)", "layers", "\\.(\\d+)\\.");
        assertEquals("0", p.groupAtStart(NAME, 1));
        assertEquals(null, p.groupAtStart("model.blocks.0.q_proj", 1));
    }

    @Test
    void theProgramSizeCountsWhatRepetitionsExpandTo() throws Exception {
        assertTrue(PeftRegex.compile("a{100}").size() >= 100);
        assertTrue(PeftRegex.compile("(ab){100}").size() >= 200);
        assertTrue(PeftRegex.compile("q_proj").size() < 20);
    }
}
