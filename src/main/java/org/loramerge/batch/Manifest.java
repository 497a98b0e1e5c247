package org.loramerge.batch;

import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.net.URI;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.regex.Pattern;
import org.loramerge.api.CombinationRequest;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.MergeOptions;
import org.loramerge.errors.UserException;
import org.loramerge.format.InputFolder;
import org.loramerge.plan.Combination;

/**
 * A batch manifest: JSON Lines, one merge a line, with {@code merge}'s options under their
 * snake_case names ({@code "max_shard_size"} for {@code --max-shard-size}); blank lines and lines
 * starting with {@code #} are skipped. README.md "Batch" describes the format.
 *
 * <pre>{@code
 * {"base": "llama", "adapter": "customer-a", "out": "merged/customer-a", "dtype": "bf16"}
 * {"base": "llama", "adapters": ["math", "code"], "combine": "ties", "density": 0.4, "out": "merged/math-code"}
 * }</pre>
 *
 * A line that cannot run as written is a {@link ManifestProblem} and leaves the others alone; two
 * lines that write one output make the whole manifest a {@link ManifestException}.
 */
public final class Manifest {
    /** Largest manifest read: 64 MB, about 300,000 lines of 200 bytes. */
    public static final long MAX_BYTES = 64_000_000L;

    /** Every key a line may hold; each is a {@code merge} option's long name in snake_case. */
    public static final List<String> KEYS = List.of("base", "adapter", "adapters", "out", "combine", "weights", "density", "majority_sign",
            "seed", "rank", "svd_clamp", "lambda", "dtype", "to", "device", "max_shard_size", "overwrite", "allow_overflow", "threads",
            "allow_empty_adapter", "verify", "verify_rows", "follow_symlinks");

    private static final ObjectMapper JSON = new ObjectMapper().enable(JsonParser.Feature.STRICT_DUPLICATE_DETECTION)
            .enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
    private static final Pattern DEVICE = Pattern.compile("(?i)auto|cpu|cuda(:\\d+)?");
    /** Rows {@code "verify": true} checks, as {@code merge --verify}'s default {@code --verify-rows}. */
    static final int DEFAULT_VERIFY_ROWS = 16;

    private final String source;
    private final List<ManifestEntry> entries;
    private final List<ManifestProblem> problems;

    private Manifest(String source, List<ManifestEntry> entries, List<ManifestProblem> problems) {
        this.source = source;
        this.entries = List.copyOf(entries);
        this.problems = List.copyOf(problems);
    }

    /** Where the manifest came from, as its messages name it. */
    public String source() {
        return source;
    }

    /** The lines that parse, in manifest order. */
    public List<ManifestEntry> entries() {
        return entries;
    }

    /** The lines that do not, in manifest order. */
    public List<ManifestProblem> problems() {
        return problems;
    }

    /**
     * Parses the manifest {@code text}; {@code source} names it in messages (a file name or URI).
     *
     * @throws ManifestException when two lines write the same output or one inside the other, or a
     *                           line's output is, holds or lies inside a line's base or adapter (the
     *                           locations compared normalized: {@code a/./b} is {@code a/b})
     */
    public static Manifest parse(String text, String source) throws ManifestException {
        return parse(text, source, null);
    }

    /**
     * Reads the manifest file {@code file}, a regular file of at most {@link #MAX_BYTES}. Outputs are
     * compared with relative paths resolved against the file's folder; the entries keep their
     * locations as written ({@link ManifestEntry#resolve}).
     */
    public static Manifest read(Path file) throws UserException {
        byte[] bytes = InputFolder.readBounded(file, MAX_BYTES, "a batch manifest");
        Path dir = file.toAbsolutePath().getParent();
        return parse(new String(bytes, StandardCharsets.UTF_8), file.toString(), dir);
    }

    private static Manifest parse(String text, String source, Path dir) throws ManifestException {
        List<ManifestEntry> entries = new ArrayList<>();
        List<ManifestProblem> problems = new ArrayList<>();
        String[] lines = text.split("\r?\n", -1);
        Map<String, Integer> outputs = new HashMap<>();
        Map<String, Integer> outputParents = new HashMap<>();
        for (int i = 0; i < lines.length; i++) {
            int number = i + 1;
            String line = lines[i].strip();
            if (line.isEmpty() || line.startsWith("#")) {
                continue;
            }
            String where = source + ":" + number;
            try {
                ManifestEntry e = entry(line, number, where);
                String key = outputKey(dir == null ? e.out() : e.resolve(dir).out());
                Integer first = outputs.putIfAbsent(key, number);
                if (first != null) {
                    throw new ManifestException(dir == null || ManifestEntry.isUri(e.out()) ? null : dir.resolve(e.out()), source + ": lines " + first + " and " + number
                            + " both write " + e.out() + "; every merge needs its own output folder: change one of them (nothing was run)");
                }
                Integer inner = outputParents.get(key);
                if (inner != null) {
                    throw nested(source, dir, e, inner, "\"out\" " + e.out() + " holds line " + inner + "'s output");
                }
                for (String up : ancestors(key)) {
                    Integer outer = outputs.get(up);
                    if (outer != null) {
                        throw nested(source, dir, e, outer, "\"out\" " + e.out() + " lies inside line " + outer + "'s output");
                    }
                    outputParents.putIfAbsent(up, number);
                }
                entries.add(e);
            } catch (LineProblem p) {
                problems.add(new ManifestProblem(number, where + ": " + p.getMessage()));
            }
        }
        for (ManifestEntry e : entries) {
            List<String> inputs = new ArrayList<>();
            inputs.add(e.base());
            inputs.addAll(e.adapters());
            for (String input : inputs) {
                String key = outputKey(dir == null ? input : ManifestEntry.resolveLocation(dir, input));
                Integer writer = outputs.get(key);
                String how = "is";
                if (writer == null) {
                    writer = outputParents.get(key);
                    how = "holds";
                }
                for (Iterator<String> up = ancestors(key).iterator(); writer == null && up.hasNext(); ) {
                    writer = outputs.get(up.next());
                    how = "lies inside";
                }
                if (writer != null) {
                    throw new ManifestException(null, source + ": line " + e.line() + " reads " + input + ", which " + how + " line " + writer
                            + "'s output; a batch's outputs must stay apart from every line's base and adapters: choose another output folder (nothing was run)");
                }
            }
        }
        return new Manifest(source, entries, problems);
    }

    private static ManifestException nested(String source, Path dir, ManifestEntry e, int other, String what) {
        return new ManifestException(dir == null || ManifestEntry.isUri(e.out()) ? null : dir.resolve(e.out()), source + ": lines " + other
                + " and " + e.line() + " write nested outputs: line " + e.line() + "'s " + what + ", and a re-run of one would replace "
                + "the other's files; give every merge its own folder, none inside another (nothing was run)");
    }

    /** The folders above a location as {@link #outputKey} spells it, nearest first; a URI's stop at its authority. */
    static List<String> ancestors(String key) {
        List<String> up = new ArrayList<>();
        if (ManifestEntry.isUri(key)) {
            int root = key.indexOf(':') + 3; // past the scheme and its two slashes
            int slash = key.indexOf('/', root);
            String k = key;
            for (int i = k.lastIndexOf('/'); slash >= 0 && i > slash; i = k.lastIndexOf('/')) {
                k = k.substring(0, i);
                up.add(k);
            }
            if (slash >= 0 && slash < key.length() - 1) {
                up.add(key.substring(0, slash));
            }
            return up;
        }
        for (Path p = Path.of(key).getParent(); p != null; p = p.getParent()) {
            up.add(p.toString());
        }
        return up;
    }

    /** A location compared with the others: a path or URI, normalized. */
    static String outputKey(String location) {
        if (ManifestEntry.isUri(location)) {
            try {
                String u = new URI(location).normalize().toString();
                return u.endsWith("/") ? u.substring(0, u.length() - 1) : u;
            } catch (URISyntaxException e) {
                return location;
            }
        }
        return Path.of(location).normalize().toString();
    }

    /** A line that cannot run: the message says which key and what to do. */
    private static final class LineProblem extends Exception {
        private static final long serialVersionUID = 1L;

        LineProblem(String message) {
            super(message, null, false, false);
        }
    }

    private static ManifestEntry entry(String line, int number, String where) throws LineProblem {
        JsonNode n;
        try {
            n = JSON.readTree(line);
        } catch (JsonProcessingException e) {
            throw new LineProblem("not a JSON object (" + e.getOriginalMessage() + "); write each merge as one JSON object on one line, "
                    + "e.g. {\"base\": \"MODEL_DIR\", \"adapter\": \"ADAPTER_DIR\", \"out\": \"OUT_DIR\"}");
        }
        if (n == null || !n.isObject()) {
            throw new LineProblem("not a JSON object; write each merge as one JSON object on one line, "
                    + "e.g. {\"base\": \"MODEL_DIR\", \"adapter\": \"ADAPTER_DIR\", \"out\": \"OUT_DIR\"}");
        }
        Map<String, JsonNode> fields = new LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = n.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> f = it.next();
            if (!KEYS.contains(f.getKey())) {
                throw new LineProblem("unknown key \"" + f.getKey() + "\"; a line takes " + String.join(", ", KEYS)
                        + " (merge's options in snake_case): remove it or correct its spelling");
            }
            fields.put(f.getKey(), f.getValue());
        }
        String base = string(fields, "base", true);
        String out = string(fields, "out", true);
        List<String> adapters;
        if (fields.containsKey("adapter") == fields.containsKey("adapters")) {
            throw new LineProblem(fields.containsKey("adapter") ? "has both \"adapter\" and \"adapters\"; give one of them"
                    : "names no adapter; add \"adapter\": \"ADAPTER_DIR\" (or \"adapters\": [...] with \"combine\")");
        }
        if (fields.containsKey("adapter")) {
            adapters = List.of(string(fields, "adapter", true));
        } else {
            JsonNode a = fields.get("adapters");
            if (!a.isArray() || a.isEmpty()) {
                throw new LineProblem("\"adapters\" must be a list of one or more adapter folders, e.g. [\"A1\", \"A2\"]");
            }
            adapters = new ArrayList<>();
            for (JsonNode x : a) {
                if (!x.isTextual() || x.textValue().isBlank()) {
                    throw new LineProblem("\"adapters\" holds " + x + "; every element must be an adapter folder's location as a string");
                }
                adapters.add(x.textValue());
            }
        }
        MergeOptions o = MergeOptions.defaults().withDevice(null);
        try {
            CombinationRequest request = new CombinationRequest(string(fields, "combine", false), weights(fields),
                    number(fields, "density"), string(fields, "majority_sign", false), integer(fields, "seed"),
                    integer(fields, "rank") == null ? null : Math.toIntExact(integer(fields, "rank")), number(fields, "svd_clamp"),
                    number(fields, "lambda"));
            Combination combination = CombinationRequest.forMerge(request, adapters.size());
            String dtype = string(fields, "dtype", false);
            if (dtype != null) {
                LoraMerge.parseDtype(dtype);
                o = o.withDtype(dtype);
            }
            String to = string(fields, "to", false);
            if (to != null) {
                LoraMerge.parseTarget(to);
                o = o.withTo(to);
            }
            String device = string(fields, "device", false);
            if (device != null) {
                if (!DEVICE.matcher(device).matches()) {
                    throw new LineProblem("\"device\": " + device + ": expected auto, cpu, cuda or cuda:N");
                }
                o = o.withDevice(device.toLowerCase(Locale.ROOT));
            }
            JsonNode size = fields.get("max_shard_size");
            if (size != null) {
                if (size.isIntegralNumber() && size.longValue() > 0) {
                    o = o.withMaxShardSize(size.longValue());
                } else if (size.isTextual()) {
                    o = o.withMaxShardSize(LoraMerge.parseSize(size.textValue()));
                } else {
                    throw new LineProblem("\"max_shard_size\": " + size + ": expected a size such as \"5GB\" or \"500MB\", or a byte count");
                }
            }
            o = o.withOverwrite(bool(fields, "overwrite")).withAllowOverflow(bool(fields, "allow_overflow"))
                    .withAllowEmptyAdapter(bool(fields, "allow_empty_adapter")).withFollowSymlinks(bool(fields, "follow_symlinks"));
            Long threads = integer(fields, "threads");
            if (threads != null) {
                if (threads < 1 || threads > Integer.MAX_VALUE) {
                    throw new LineProblem("\"threads\": " + threads + ": expected 1 or more (leave it out for the batch's share of the cores)");
                }
                o = o.withThreads(threads.intValue());
            }
            o = o.withVerifyRows(verifyRows(fields));
            return new ManifestEntry(number, base, adapters, out, combination, o);
        } catch (UserException e) {
            throw new LineProblem(keysForOptions(e.getMessage()) + " (fix the line, or leave it out)");
        } catch (ArithmeticException e) {
            throw new LineProblem("\"rank\": out of range; give a rank of 1 or more");
        }
    }

    /** {@code "verify": true | N | "all"} and {@code "verify_rows": N | "all"}, as merge's --verify and --verify-rows; 0 for no check. */
    private static int verifyRows(Map<String, JsonNode> fields) throws LineProblem, UserException {
        JsonNode v = fields.get("verify");
        JsonNode r = fields.get("verify_rows");
        int rows = DEFAULT_VERIFY_ROWS;
        if (r != null) {
            if (!r.isIntegralNumber() && !r.isTextual()) {
                throw new LineProblem("\"verify_rows\": " + r + ": expected a positive number of rows, or \"all\"");
            }
            rows = LoraMerge.parseRows("--verify-rows", r.isTextual() ? r.textValue() : r.asText());
        }
        if (v == null || (v.isBoolean() && !v.booleanValue())) {
            return 0;
        }
        if (v.isBoolean()) {
            return rows;
        }
        if ((v.isIntegralNumber() || v.isTextual()) && r == null) {
            return LoraMerge.parseRows("--verify", v.isTextual() ? v.textValue() : v.asText());
        }
        throw new LineProblem("\"verify\": " + v + ": expected true, false, a number of rows or \"all\" (with \"verify_rows\": true or false)");
    }

    /** A message of merge's option parsers with its {@code --option} names spelled as this format's keys. */
    private static String keysForOptions(String message) {
        String m = message;
        for (String k : KEYS) {
            m = m.replaceAll("--" + k.replace('_', '-') + "(?![\\w-])", "\"" + k + "\"");
        }
        return m;
    }

    private static String string(Map<String, JsonNode> fields, String key, boolean required) throws LineProblem {
        JsonNode v = fields.get(key);
        if (v == null) {
            if (required) {
                throw new LineProblem("has no \"" + key + "\"; every line needs \"base\", \"adapter\" (or \"adapters\") and \"out\"");
            }
            return null;
        }
        if (!v.isTextual() || v.textValue().isBlank()) {
            throw new LineProblem("\"" + key + "\": " + v + ": expected a non-empty string");
        }
        return v.textValue();
    }

    private static Double number(Map<String, JsonNode> fields, String key) throws LineProblem {
        JsonNode v = fields.get(key);
        if (v == null) {
            return null;
        }
        if (!v.isNumber()) {
            throw new LineProblem("\"" + key + "\": " + v + ": expected a number");
        }
        return v.doubleValue();
    }

    private static Long integer(Map<String, JsonNode> fields, String key) throws LineProblem {
        JsonNode v = fields.get(key);
        if (v == null) {
            return null;
        }
        if (!v.isIntegralNumber() || !v.canConvertToLong()) {
            throw new LineProblem("\"" + key + "\": " + v + ": expected a whole number");
        }
        return v.longValue();
    }

    private static boolean bool(Map<String, JsonNode> fields, String key) throws LineProblem {
        JsonNode v = fields.get(key);
        if (v == null) {
            return false;
        }
        if (!v.isBoolean()) {
            throw new LineProblem("\"" + key + "\": " + v + ": expected true or false");
        }
        return v.booleanValue();
    }

    private static List<Double> weights(Map<String, JsonNode> fields) throws LineProblem {
        JsonNode v = fields.get("weights");
        if (v == null) {
            return null;
        }
        if (!v.isArray()) {
            throw new LineProblem("\"weights\": " + v + ": expected a list of numbers, one per adapter, e.g. [1.0, 0.5]");
        }
        List<Double> ws = new ArrayList<>();
        for (JsonNode w : v) {
            if (!w.isNumber()) {
                throw new LineProblem("\"weights\" holds " + w + ": expected a list of numbers, one per adapter, e.g. [1.0, 0.5]");
            }
            ws.add(w.doubleValue());
        }
        return ws;
    }
}
