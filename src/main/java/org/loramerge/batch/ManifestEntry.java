package org.loramerge.batch;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.regex.Pattern;
import org.loramerge.api.LoraMerge;
import org.loramerge.api.MergeOptions;
import org.loramerge.api.MergeResult;
import org.loramerge.errors.UsageException;
import org.loramerge.errors.UserException;
import org.loramerge.format.DType;
import org.loramerge.format.Json;
import org.loramerge.plan.Combination;
import org.loramerge.plan.QuantTarget;

/**
 * One merge of a batch manifest: a line of {@code merges.jsonl}, parsed and checked.
 *
 * @param line        the line's number in the manifest, from 1
 * @param base        the base model's location as written: a local path, or a URI ({@code hdfs://...}) that a
 *                    cluster job resolves
 * @param adapters    the adapters' locations as written, one or more
 * @param out         the output folder's location as written
 * @param combination how several adapters combine ({@code merge --combine}); null for one adapter
 * @param options     the line's options over {@link MergeOptions#defaults()}; {@code device} is null unless the line
 *                    names one, and {@code log} is null
 */
public record ManifestEntry(int line, String base, List<String> adapters, String out, Combination combination, MergeOptions options) {
    private static final Pattern URI = Pattern.compile("^[A-Za-z][A-Za-z0-9+.-]*://.*");

    public ManifestEntry {
        adapters = List.copyOf(adapters);
    }

    /** Whether {@code location} is a URI with a scheme ({@code hdfs://}, {@code s3a://}, {@code file://}) rather than a local path. */
    public static boolean isUri(String location) {
        return URI.matcher(location).matches();
    }

    /** This entry with its relative local paths resolved against {@code dir} (the manifest's folder); URIs and absolute paths stay. */
    public ManifestEntry resolve(Path dir) {
        List<String> as = new ArrayList<>();
        for (String a : adapters) {
            as.add(resolve(dir, a));
        }
        return new ManifestEntry(line, resolve(dir, base), as, resolve(dir, out), combination, options);
    }

    private static String resolve(Path dir, String location) {
        return resolveLocation(dir, location);
    }

    /**
     * This entry with its local paths as the manifest in the folder {@code dir} means them, spelled
     * so that they stay the same when the folder moves: a relative path normalized (still relative),
     * an absolute path inside {@code dir} made relative to it, any other absolute path normalized; URIs
     * stay. Its {@link #id()} is the line's identity in a batch's state folder.
     */
    public ManifestEntry relativeTo(Path dir) {
        Path root = dir.toAbsolutePath().normalize();
        List<String> as = new ArrayList<>();
        for (String a : adapters) {
            as.add(relative(root, a));
        }
        return new ManifestEntry(line, relative(root, base), as, relative(root, out), combination, options);
    }

    private static String relative(Path root, String location) {
        if (isUri(location)) {
            return location;
        }
        Path p = Path.of(location);
        if (!p.isAbsolute()) {
            return root.relativize(root.resolve(p).normalize()).toString();
        }
        Path n = p.normalize();
        return n.startsWith(root) ? root.relativize(n).toString() : n.toString();
    }

    /** {@code location} resolved against {@code dir} and normalized when it is a local path; a URI as it is. */
    static String resolveLocation(Path dir, String location) {
        return isUri(location) ? location : dir.resolve(location).normalize().toString();
    }

    /** This entry with other options (the batch sets threads, overwrite). */
    public ManifestEntry withOptions(MergeOptions newOptions) {
        return new ManifestEntry(line, base, adapters, out, combination, newOptions);
    }

    /**
     * Runs this merge: {@link LoraMerge#merge(Path, List, Combination, Path, MergeOptions)} with this
     * line's combination and options, on {@code device} when not null (the batch worker's or the
     * cluster task's device), else the device the line names, else {@code auto}; progress and warnings
     * go to {@code log} (null: silent). The locations are given as local paths: the caller has resolved
     * this entry's. The one way both the batch command and the cluster job run a line.
     */
    public MergeResult run(Path basePath, List<Path> adapterPaths, Path outPath, String device, PrintStream log) throws UserException, IOException {
        String d = device != null ? device : options.device() != null ? options.device() : "auto";
        return LoraMerge.merge(basePath, adapterPaths, combination, outPath, options.withDevice(d).withLog(log));
    }

    /**
     * A stable identifier of what this line writes, for state records: the first 16 hex digits of
     * the SHA-256 of {@link #canonicalJson()}. The same line gives the same id wherever it stands in
     * the manifest and however its JSON is spaced or ordered; any change of location, adapter,
     * combination or an option that changes the output's bytes gives another.
     */
    public String id() {
        try {
            byte[] h = MessageDigest.getInstance("SHA-256").digest(canonicalJson().getBytes(StandardCharsets.UTF_8));
            return HexFormat.of().formatHex(h, 0, 8);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("SHA-256 is missing from this Java runtime", e);
        }
    }

    /**
     * The line as sorted-key JSON with every default filled in, leaving out what does not change the
     * output's bytes (device, threads, overwrite) and the line number.
     */
    public String canonicalJson() {
        ObjectNode n = JsonNodeFactory.instance.objectNode();
        n.put("base", base);
        ArrayNode as = n.putArray("adapters");
        adapters.forEach(as::add);
        n.put("out", out);
        if (combination != null) {
            n.put("combine", combination.method().cliName());
            ArrayNode ws = n.putArray("weights");
            combination.weights().forEach(ws::add);
            n.put("density", combination.density());
            n.put("majority_sign", combination.majority().cliName());
            n.put("lambda", combination.lambda());
            n.put("seed", combination.seed());
            n.put("rank", combination.rank());
            if (combination.svdClamp() != null) {
                n.put("svd_clamp", combination.svdClamp());
            }
        }
        // spelled as the parsers read them, so "bfloat16" and "bf16" are one line
        try {
            DType dtype = LoraMerge.parseDtype(options.dtype());
            n.put("dtype", dtype == null ? "auto" : dtype.name());
            QuantTarget to = LoraMerge.parseTarget(options.to());
            if (to != null) {
                n.put("to", to.name());
            }
        } catch (UsageException e) {
            throw new IllegalStateException("an entry holds a dtype the manifest's parser refused: " + e.getMessage(), e);
        }
        n.put("max_shard_size", options.maxShardSize());
        n.put("allow_overflow", options.allowOverflow());
        n.put("allow_empty_adapter", options.allowEmptyAdapter());
        n.put("follow_symlinks", options.followSymlinks());
        n.put("verify_rows", options.verifyRows());
        return Json.python(n);
    }
}
