package org.loramerge.spark;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.PropertyNamingStrategies;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.resource.ResourceProfileBuilder;
import org.apache.spark.resource.TaskResourceRequests;
import org.loramerge.batch.Manifest;
import org.loramerge.batch.ManifestEntry;
import org.loramerge.batch.ManifestException;
import org.loramerge.batch.ManifestProblem;
import org.loramerge.errors.UsageException;
import org.loramerge.errors.UserException;

/**
 * The Spark job: runs a batch manifest ({@link Manifest}, the format of {@code loramerge batch}) on a
 * cluster, one task per line, and writes the result table. README.md, "On a Spark cluster", shows the
 * spark-submit line.
 *
 * <pre>
 * SparkBatch MANIFEST RESULTS [--device cpu|auto|cuda:N] [--commit auto|rename|marker]
 *            [--claim-timeout SECONDS] [--work-dir DIR] [--task-gpus AMOUNT] [--strict]
 * </pre>
 *
 * MANIFEST and RESULTS are Hadoop locations (a local path, hdfs://, s3a://, ...); a relative
 * location in the manifest is relative to the manifest's folder, on the manifest's store.
 */
public final class SparkBatch {
    /** Test hook: the first attempt of each task fails after uploading this many files. */
    static final String FAIL_AFTER_FILES = "spark.loramerge.test.failAfterFiles";
    /** Test hook: the first attempt of each task waits this many milliseconds before it commits. */
    static final String SLOW_FIRST_MILLIS = "spark.loramerge.test.slowFirstMillis";
    static final long DEFAULT_CLAIM_TIMEOUT_SECONDS = 600;

    private static final ObjectMapper JSON = new ObjectMapper().setPropertyNamingStrategy(PropertyNamingStrategies.SNAKE_CASE);
    private static final Pattern LOCAL_MASTER = Pattern.compile("local(?:\\[[^,\\]]+(?:,(\\d+))?])?");

    private SparkBatch() {
    }

    public static void main(String[] args) throws Exception {
        try (JavaSparkContext sc = new JavaSparkContext(new SparkConf().setAppName("loramerge batch"))) {
            List<ResultRow> rows = run(sc, args);
            long failed = rows.stream().filter(r -> r.status().equals(ResultRow.FAILED)).count();
            if (failed > 0) {
                throw new IllegalStateException(failed + " of " + rows.size() + " merges failed; the result table (" + args[1] + ") says why");
            }
        }
    }

    /**
     * Runs the manifest with {@code sc} and writes the result table; returns its rows in manifest order.
     *
     * @throws UserException a usage error, or a manifest that cannot run at all (two lines with one
     *                       output; any bad line with --strict): nothing was run
     */
    public static List<ResultRow> run(JavaSparkContext sc, String... args) throws UserException, IOException {
        Arguments a = Arguments.parse(args);
        Configuration hadoop = sc.hadoopConfiguration();
        Path manifestPath = Stores.qualify(a.manifest, hadoop);
        Path resultsPath = Stores.qualify(a.results, hadoop);
        String text = read(manifestPath, hadoop);
        Manifest manifest = Manifest.parse(text, manifestPath.toString());

        List<ResultRow> rows = new ArrayList<>();
        List<String> problems = new ArrayList<>();
        for (ManifestProblem p : manifest.problems()) {
            rows.add(ResultRow.failed(p.line(), null, p.message(), 0, null, 0));
            problems.add(p.message());
        }
        List<LineSpec> specs = new ArrayList<>();
        Map<Path, Integer> outputs = new HashMap<>();
        for (ManifestEntry e : manifest.entries()) {
            LineSpec spec = locate(e, manifestPath, hadoop);
            Integer first = outputs.putIfAbsent(new Path(spec.out()), e.line());
            if (first != null) {
                throw new ManifestException(null, manifestPath + ": lines " + first + " and " + e.line() + " both write " + spec.out()
                        + "; every merge needs its own output folder: change one of them (nothing was run)");
            }
            String missing = missingInput(spec, hadoop);
            if (missing != null) {
                String message = manifestPath + ":" + e.line() + ": " + missing + " does not exist; correct the location or leave the line out";
                rows.add(ResultRow.failed(e.line(), e.out(), message, 0, null, 0));
                problems.add(message);
            } else {
                specs.add(spec);
            }
        }
        if (a.strict && !problems.isEmpty()) {
            throw new ManifestException(null, problems.size() + " manifest lines cannot run (--strict: nothing was run): " + String.join("; ", problems));
        }
        if (!specs.isEmpty()) {
            JobOptions options = new JobOptions(a.device, a.commit, a.claimTimeoutSeconds * 1000, a.workDir, maxFailures(sc),
                    sc.getConf().getInt(FAIL_AFTER_FILES, 0), sc.getConf().getLong(SLOW_FIRST_MILLIS, 0));
            LineTask task = new LineTask(sc.broadcast(text), manifestPath.toString(), sc.broadcast(new HadoopConf(hadoop)), options);
            // one partition per line: a task per merge, each scheduled (and given a GPU) on its own
            JavaRDD<LineSpec> lines = sc.parallelize(specs, specs.size());
            if (a.taskGpus > 0) {
                lines = lines.withResources(new ResourceProfileBuilder().require(new TaskResourceRequests().resource("gpu", a.taskGpus)).build());
            }
            rows.addAll(lines.map(task).collect());
        }
        rows.sort(Comparator.comparingInt(ResultRow::line));
        write(rows, resultsPath, hadoop);
        long done = rows.stream().filter(r -> r.status().equals(ResultRow.DONE)).count();
        long skipped = rows.stream().filter(r -> r.status().equals(ResultRow.SKIPPED)).count();
        System.out.println("loramerge: " + rows.size() + " lines: " + done + " done, " + skipped + " skipped, " + (rows.size() - done - skipped)
                + " failed; results in " + resultsPath);
        return rows;
    }

    /** The line's locations, qualified: a relative one is the manifest folder's, an absolute path without a scheme is on the manifest's store. */
    private static LineSpec locate(ManifestEntry e, Path manifest, Configuration conf) throws IOException {
        List<String> adapters = new ArrayList<>();
        for (String x : e.adapters()) {
            adapters.add(qualify(manifest, x, conf));
        }
        return new LineSpec(e.line(), e.out(), qualify(manifest, e.base(), conf), adapters, qualify(manifest, e.out(), conf));
    }

    private static String qualify(Path manifest, String location, Configuration conf) throws IOException {
        Path p = new Path(manifest.getParent(), location);
        return p.getFileSystem(conf).makeQualified(p).toString();
    }

    private static String missingInput(LineSpec spec, Configuration conf) throws IOException {
        List<String> inputs = new ArrayList<>(spec.adapters());
        inputs.add(0, spec.base());
        for (String i : inputs) {
            Path p = new Path(i);
            if (!p.getFileSystem(conf).exists(p)) {
                return (i.equals(spec.base()) ? "base " : "adapter ") + i;
            }
        }
        return null;
    }

    /** How many attempts Spark gives a task: local[N] runs each once, local[N,F] F times, a cluster spark.task.maxFailures. */
    static int maxFailures(JavaSparkContext sc) {
        Matcher m = LOCAL_MASTER.matcher(sc.master());
        if (m.matches()) {
            return m.group(1) == null ? 1 : Integer.parseInt(m.group(1));
        }
        return sc.getConf().getInt("spark.task.maxFailures", 4);
    }

    private static String read(Path manifest, Configuration conf) throws IOException, UserException {
        FileSystem fs = Stores.of(manifest, conf);
        if (!fs.exists(manifest) || !fs.getFileStatus(manifest).isFile()) {
            throw new ManifestException(null, manifest + ": no manifest file there; give the location of the JSON Lines manifest");
        }
        if (fs.getFileStatus(manifest).getLen() > Manifest.MAX_BYTES) {
            throw new ManifestException(null, manifest + ": larger than " + Manifest.MAX_BYTES + " bytes; split the manifest");
        }
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (InputStream in = fs.open(manifest)) {
            in.transferTo(bytes);
        }
        return bytes.toString(StandardCharsets.UTF_8);
    }

    private static void write(List<ResultRow> rows, Path results, Configuration conf) throws IOException {
        FileSystem fs = Stores.of(results, conf);
        try (OutputStream o = fs.create(results, true)) {
            for (ResultRow r : rows) {
                o.write(JSON.writeValueAsBytes(r));
                o.write('\n');
            }
        }
    }

    /** The command line of the job. */
    private static final class Arguments {
        String manifest;
        String results;
        String device;
        String commit = "auto";
        long claimTimeoutSeconds = DEFAULT_CLAIM_TIMEOUT_SECONDS;
        String workDir;
        double taskGpus;
        boolean strict;

        static Arguments parse(String[] args) throws UsageException {
            Arguments a = new Arguments();
            List<String> positional = new ArrayList<>();
            for (int i = 0; i < args.length; i++) {
                String s = args[i];
                switch (s) {
                    case "--device" -> a.device = value(args, ++i, s);
                    case "--commit" -> {
                        a.commit = value(args, ++i, s);
                        if (!List.of("auto", "rename", "marker").contains(a.commit)) {
                            throw new UsageException("--commit " + a.commit + ": expected auto, rename or marker");
                        }
                    }
                    case "--claim-timeout" -> a.claimTimeoutSeconds = positiveLong(value(args, ++i, s), s);
                    case "--work-dir" -> a.workDir = value(args, ++i, s);
                    case "--task-gpus" -> {
                        String v = value(args, ++i, s);
                        try {
                            a.taskGpus = Double.parseDouble(v);
                        } catch (NumberFormatException e) {
                            a.taskGpus = -1;
                        }
                        if (!(a.taskGpus > 0)) {
                            throw new UsageException("--task-gpus " + v + ": expected a positive amount, such as 1 or 0.5");
                        }
                    }
                    case "--strict" -> a.strict = true;
                    default -> {
                        if (s.startsWith("--")) {
                            throw new UsageException(s + ": unknown option; " + USAGE);
                        }
                        positional.add(s);
                    }
                }
            }
            if (positional.size() != 2) {
                throw new UsageException("expected a manifest and a results location; " + USAGE);
            }
            a.manifest = positional.get(0);
            a.results = positional.get(1);
            return a;
        }

        static final String USAGE = "usage: SparkBatch MANIFEST RESULTS [--device cpu|auto|cuda:N] [--commit auto|rename|marker] "
                + "[--claim-timeout SECONDS] [--work-dir DIR] [--task-gpus AMOUNT] [--strict]";

        private static String value(String[] args, int i, String option) throws UsageException {
            if (i >= args.length) {
                throw new UsageException(option + " needs a value; " + USAGE);
            }
            return args[i];
        }

        private static long positiveLong(String v, String option) throws UsageException {
            try {
                long n = Long.parseLong(v);
                if (n > 0) {
                    return n;
                }
            } catch (NumberFormatException e) {
                // reported below
            }
            throw new UsageException(option + " " + v + ": expected a positive number of seconds");
        }
    }
}
