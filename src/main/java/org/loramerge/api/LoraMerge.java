package org.loramerge.api;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import org.loramerge.adapter.AdapterConfig;
import org.loramerge.adapter.AdapterException;
import org.loramerge.adapter.AdapterKey;
import org.loramerge.adapter.LoraAdapter;
import org.loramerge.engine.Backend;
import org.loramerge.engine.Stages;
import org.loramerge.engine.Tuning;
import org.loramerge.engine.select.Backends;
import org.loramerge.errors.UsageException;
import org.loramerge.errors.UserException;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsException;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;
import org.loramerge.pipeline.AtomicOutput;
import org.loramerge.pipeline.MergeReport;
import org.loramerge.pipeline.MergeRunner;
import org.loramerge.pipeline.Progress;
import org.loramerge.pipeline.QuantizeRunner;
import org.loramerge.plan.Combination;
import org.loramerge.plan.ExpertParameters;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.QuantTarget;
import org.loramerge.quant.FourBitCode;
import org.loramerge.quant.ModelQuantizer;
import org.loramerge.quant.Nf4Codec;
import org.loramerge.quant.QuantException;
import org.loramerge.quant.QuantizedModel;
import org.loramerge.quant.QuantizedWeight;
import org.loramerge.quant.WeightFormats;
import org.loramerge.verify.Tolerance;
import org.loramerge.verify.Verifier;

/**
 * loramerge as a library: the four commands as static methods, each taking folders and an options
 * record and returning an immutable result record. This package is the supported API; the packages
 * below it (plan, pipeline, engine, ...) may change between versions.
 *
 * <pre>{@code
 * MergeResult r = LoraMerge.merge(Path.of("llama"), Path.of("my-adapter"), Path.of("merged"),
 *         MergeOptions.defaults().withDevice("cpu").withVerifyRows(16));
 * System.out.println(r.tensorsMerged() + " tensors merged into " + r.output());
 * }</pre>
 *
 * <p>Failures the caller can act on are {@link UserException}s (a malformed input, an adapter for
 * another model, an output that exists, an overflow, a failed verification, no usable GPU), whose
 * {@link UserException#exitCode()} says which kind and whose message names the file and the fix;
 * nothing is left behind by a failed merge or quantization. {@link IOException} is a disk or
 * file-system failure. Any other exception is a bug. The methods are safe to call from several
 * threads at once on different outputs.
 */
public final class LoraMerge {
    private LoraMerge() {
    }

    /**
     * Merges the PEFT LoRA adapter in {@code adapter} into the model in {@code base} and writes a
     * Hugging Face checkpoint to {@code out}, which appears only when complete. {@code out}'s parent
     * folders are created if missing; {@code out} itself must not exist unless
     * {@code options.overwrite()}. Checked before anything else is read.
     */
    public static MergeResult merge(Path base, Path adapter, Path out, MergeOptions options) throws UserException, IOException {
        return merge(base, List.of(adapter), null, out, options);
    }

    /**
     * Merges several PEFT LoRA adapters of one base, combined by {@code combination} (PEFT's
     * add_weighted_adapter methods and task arithmetic; docs/FORMATS.md §8), into the model in
     * {@code base}, as {@link #merge(Path, Path, Path, MergeOptions)} merges one. {@code combination}
     * is null only for a single adapter; {@code combination.weights()} has one weight per adapter.
     */
    public static MergeResult merge(Path base, List<Path> adapters, Combination combination, Path out, MergeOptions options)
            throws UserException, IOException {
        if (adapters.isEmpty() || (combination == null && adapters.size() > 1)) {
            throw new UsageException(adapters.size() + " adapters given: choose how they combine (--combine METHOD; docs/FORMATS.md §8)");
        }
        DType dtype = parseDtype(options.dtype());
        QuantTarget to = parseTarget(options.to());
        if (options.maxShardSize() <= 0) {
            throw new UsageException("--max-shard-size " + options.maxShardSize() + ": expected a positive size such as 5GB or 500MB");
        }
        if (options.threads() < 0) {
            throw new UsageException("--threads " + options.threads() + ": expected 1 or more (default: all cores)");
        }
        if (options.verifyRows() < 0) {
            throw new UsageException("--verify-rows " + options.verifyRows() + ": expected a positive number of rows, or all");
        }
        int cpuThreads = options.threads() > 0 ? options.threads() : Runtime.getRuntime().availableProcessors();
        Tuning tuning = tuning();
        PrintStream log = options.log();
        long start = System.nanoTime();
        List<Path> inputs = new ArrayList<>();
        inputs.add(base);
        inputs.addAll(adapters);
        try (AtomicOutput output = AtomicOutput.create(out, options.overwrite(), inputs)) {
            // the engine starts (its modules, workers; the driver itself started in Main.prestartEngine) while the plan is made
            CompletableFuture<Backends.Choice> opening = openInBackground(options.device(), cpuThreads, parallelWrites(tuning, output.dir()));
            Backends.Choice choice = null;
            try (Checkpoint ckpt = openBase(base, options.followSymlinks()); Adapters loras = Adapters.open(adapters, options.followSymlinks())) {
                PlanOptions planOptions = new PlanOptions(dtype, options.maxShardSize(), to);
                MergePlan plan = combination == null ? Planner.plan(ckpt, loras.list().get(0), planOptions)
                        : Planner.plan(ckpt, loras.list(), planOptions, combination);
                requireAChange(plan, loras.list(), options);
                long planned = System.nanoTime();
                choice = await(opening);
                long started = System.nanoTime();
                double startSeconds = (started - start) / 1e9;
                Backends.Choice chosen = choice;
                return withBackend(chosen.backend(), log, backend -> {
                    if (log != null) {
                        if (chosen.fallbackReason() != null) {
                            log.println("loramerge: no usable GPU (" + chosen.fallbackReason() + "); merging on the CPU");
                        }
                        log.println("loramerge: merging " + plan.tensors().size() + " tensors (" + Progress.bytes(plan.totalBytes()) + ") on "
                                + backend.describe());
                        for (String w : plan.warnings()) {
                            log.println("warning: " + w);
                        }
                    }
                    Progress progress = new Progress(log == null ? System.err : log, log != null, plan.totalBytes(), plan.tensors().size());
                    MergeReport report = MergeRunner.run(plan, backend, output,
                            new MergeRunner.Options(options.allowOverflow(), options.verifyRows(), tuning), progress);
                    report.startSeconds = startSeconds;
                    report.stages().add(Stages.Stage.PLAN, planned - start, 0);
                    report.stages().add(Stages.Stage.ENGINE_START, started - planned, 0);
                    if (tuning.describe() != null) {
                        report.notes.add(tuning.describe());
                    }
                    return MergeResult.of(report, options.verifyRows());
                });
            } finally {
                if (choice == null) {
                    // planning failed: close the engine once it has started
                    opening.thenAccept(c -> c.backend().close());
                }
            }
        } catch (UserException | IOException | RuntimeException e) {
            throw e;
        } catch (Exception e) {
            throw new IllegalStateException("merge failed unexpectedly: " + e, e);
        }
    }

    /**
     * One merge of {@link #mergeShared}: its adapters, their combination (null for one adapter), its
     * output and its own options ({@code overwrite}, {@code allowOverflow}, {@code verifyRows},
     * {@code allowEmptyAdapter}, {@code log}; the others are the shared pass's).
     */
    public record SharedMerge(List<Path> adapters, Combination combination, Path out, MergeOptions options) {
    }

    /**
     * What became of one merge of {@link #mergeShared}: its result, or the failure that stopped it
     * alone (nothing written for it), or neither when it could not share the pass and is to be run
     * on its own with {@link #merge(Path, List, Combination, Path, MergeOptions)}.
     */
    public record SharedOutcome(MergeResult result, UserException error) {
        /** Whether the merge is still to be run on its own. */
        public boolean notRun() {
            return result == null && error == null;
        }
    }

    /**
     * Several merges into one base in one pass: the base is opened once and each of its tensors read
     * once for all of them, and every output gets the bytes that
     * {@link #merge(Path, List, Combination, Path, MergeOptions)} writes for it alone. The merges
     * must agree on {@code dtype}, {@code to}, {@code maxShardSize}, {@code followSymlinks}, which
     * {@code shared} gives, and run on {@code shared}'s device and threads. A merge whose output or
     * plan fails gets its error; merges whose outputs would be laid out differently from the first
     * (a resized vocabulary, replaced tensors of other shapes) are returned not run, and so are all
     * of them when the pass fails while streaming, as that failure may be any one merge's.
     *
     * @return per merge, in order, its outcome
     * @throws UserException for an unreadable base or no usable device: nothing was written
     */
    public static List<SharedOutcome> mergeShared(Path base, List<SharedMerge> merges, MergeOptions shared) throws UserException, IOException {
        DType dtype = parseDtype(shared.dtype());
        QuantTarget to = parseTarget(shared.to());
        if (shared.maxShardSize() <= 0) {
            throw new UsageException("--max-shard-size " + shared.maxShardSize() + ": expected a positive size such as 5GB or 500MB");
        }
        if (shared.threads() < 0) {
            throw new UsageException("--threads " + shared.threads() + ": expected 1 or more (default: all cores)");
        }
        int cpuThreads = shared.threads() > 0 ? shared.threads() : Runtime.getRuntime().availableProcessors();
        Tuning tuning = tuning();
        long start = System.nanoTime();
        int n = merges.size();
        SharedOutcome[] outcomes = new SharedOutcome[n];
        List<AtomicOutput> outputs = new ArrayList<>();
        List<Adapters> opened = new ArrayList<>();
        try (Checkpoint ckpt = openBase(base, shared.followSymlinks())) {
            List<Integer> members = new ArrayList<>();
            List<MergePlan> plans = new ArrayList<>();
            PlanOptions planOptions = new PlanOptions(dtype, shared.maxShardSize(), to);
            for (int k = 0; k < n; k++) {
                SharedMerge m = merges.get(k);
                if (m.options().verifyRows() < 0) {
                    outcomes[k] = new SharedOutcome(null, new UsageException("--verify-rows " + m.options().verifyRows()
                            + ": expected a positive number of rows, or all"));
                    continue;
                }
                if (m.adapters().isEmpty() || (m.combination() == null && m.adapters().size() > 1)) {
                    outcomes[k] = new SharedOutcome(null, new UsageException(m.adapters().size()
                            + " adapters given: choose how they combine (--combine METHOD; docs/FORMATS.md §8)"));
                    continue;
                }
                List<Path> inputs = new ArrayList<>();
                inputs.add(base);
                inputs.addAll(m.adapters());
                AtomicOutput output = null;
                try {
                    output = AtomicOutput.create(m.out(), m.options().overwrite(), inputs);
                    Adapters loras = Adapters.open(m.adapters(), shared.followSymlinks());
                    opened.add(loras);
                    MergePlan plan = m.combination() == null ? Planner.plan(ckpt, loras.list().get(0), planOptions)
                            : Planner.plan(ckpt, loras.list(), planOptions, m.combination());
                    requireAChange(plan, loras.list(), m.options());
                    if (!plans.isEmpty() && !MergeRunner.sameLayout(List.of(plans.get(0), plan))) {
                        output.close();
                        outcomes[k] = new SharedOutcome(null, null);
                        continue;
                    }
                    outputs.add(output);
                    plans.add(plan);
                    members.add(k);
                } catch (UserException e) {
                    if (output != null) {
                        output.close();
                    }
                    outcomes[k] = new SharedOutcome(null, e);
                } catch (IOException | RuntimeException e) {
                    // not one of the failures a user acts on: the merge on its own reports it as merge does
                    if (output != null) {
                        output.close();
                    }
                    outcomes[k] = new SharedOutcome(null, null);
                }
            }
            if (!plans.isEmpty()) {
                boolean parallel = false;
                for (AtomicOutput o : outputs) {
                    parallel |= parallelWrites(tuning, o.dir());
                }
                Backends.Choice choice = Backends.open(shared.device(), cpuThreads, parallel);
                double startSeconds = (System.nanoTime() - start) / 1e9;
                List<MergeRunner.Options> options = new ArrayList<>();
                try {
                    withBackend(choice.backend(), shared.log(), backend -> {
                        for (int k : members) {
                            MergeOptions o = merges.get(k).options();
                            options.add(new MergeRunner.Options(o.allowOverflow(), o.verifyRows(), tuning));
                        }
                        List<MergeRunner.SharedOutcome> done;
                        try {
                            done = MergeRunner.runShared(plans, backend, outputs, options);
                        } catch (Exception e) {
                            for (int k : members) {
                                outcomes[k] = new SharedOutcome(null, null);
                            }
                            return null;
                        }
                        for (int i = 0; i < members.size(); i++) {
                            int k = members.get(i);
                            MergeRunner.SharedOutcome d = done.get(i);
                            if (d.error() == null) {
                                d.report().startSeconds = startSeconds;
                                outcomes[k] = new SharedOutcome(MergeResult.of(d.report(), merges.get(k).options().verifyRows()), null);
                            } else if (d.error() instanceof UserException) {
                                outcomes[k] = new SharedOutcome(null, (UserException) d.error());
                            } else {
                                outcomes[k] = new SharedOutcome(null, null);
                            }
                        }
                        return null;
                    });
                } catch (UserException | IOException | RuntimeException e) {
                    throw e;
                } catch (Exception e) {
                    throw new IllegalStateException("a shared merge failed unexpectedly: " + e, e);
                }
            }
            return List.of(outcomes);
        } finally {
            for (AtomicOutput o : outputs) {
                o.close();
            }
            for (Adapters a : opened) {
                a.close();
            }
        }
    }

    /** Work done on an open engine. */
    @FunctionalInterface
    interface BackendWork<T> {
        T run(Backend backend) throws Exception;
    }

    /**
     * Runs {@code work} on {@code backend}, then closes it. Once {@code work} has returned, its
     * outputs are committed and a failure to close the engine cannot undo them: it is a warning on
     * {@code log} (stderr when null) and the result is returned, so that a caller keeps the record of
     * what was written. When {@code work} fails, the engine is closed and the failure thrown, any
     * failure to close added to it as suppressed.
     */
    static <T> T withBackend(Backend backend, PrintStream log, BackendWork<T> work) throws Exception {
        T result;
        try {
            result = work.run(backend);
        } catch (Throwable t) {
            try {
                backend.close();
            } catch (RuntimeException | Error c) {
                t.addSuppressed(c);
            }
            throw t;
        }
        try {
            backend.close();
        } catch (RuntimeException c) {
            (log != null ? log : System.err).println("warning: the outputs are written and complete, but closing the engine ("
                    + backend.describe() + ") failed: " + c);
        }
        return result;
    }

    /**
     * An adapter that changes nothing is a failure (an adapter saved before training, the wrong
     * folder) unless {@code allowEmptyAdapter}, which writes a copy of the base and says so.
     */
    private static void requireAChange(MergePlan plan, List<LoraAdapter> loras, MergeOptions options) throws AdapterException {
        if (!plan.changesNothing()) {
            return;
        }
        LoraAdapter lora = loras.get(0);
        String what = loras.size() > 1 ? "and the other " + (loras.size() - 1) + " adapters hold no tensor that changes the base"
                : lora.keys().isEmpty() ? "holds no tensors" : "holds " + lora.keys().size() + " tensors, none of which changes the base";
        if (!options.allowEmptyAdapter()) {
            throw new AdapterException(AdapterException.Reason.NO_CHANGE, lora.dir().resolve(LoraAdapter.WEIGHTS), what
                    + (loras.size() == 1 && lora.config().hasTargetRule() ? " although adapter_config.json targets modules" : "")
                    + ", so the merge would only copy the base; check that this is the adapter you meant and that it was saved after "
                    + "training (PEFT's save_pretrained), or pass --allow-empty-adapter to write the copy anyway");
        }
        if (options.log() != null) {
            options.log().println("warning: " + lora.dir().resolve(LoraAdapter.WEIGHTS) + " " + what
                    + "; the output is a copy of the base (--allow-empty-adapter)");
        }
    }

    /**
     * Checks the model in {@code merged} against {@code base} + {@code adapter}: every tensor there
     * with the planned shape, every unchanged tensor compared completely with the base, and sampled
     * rows (or all rows) of every adapted tensor against the exact merge, judged by
     * {@code options.tolerance()}. Works on any tool's merge.
     */
    public static VerifyResult verify(Path base, Path adapter, Path merged, VerifyOptions options) throws UserException, IOException {
        if (options.rows() < 1) {
            throw new UsageException("--rows " + options.rows() + ": expected a positive number of rows, or all");
        }
        if (options.tolerance().mode() == Tolerance.Mode.ULP && !(options.tolerance().maxUlp() >= 0)) {
            throw new UsageException("--max-ulp " + options.tolerance().maxUlp() + ": expected 0 or more");
        }
        boolean follow = options.followSymlinks();
        try (Checkpoint b = openBase(base, follow); LoraAdapter a = openAdapter(adapter, follow); Checkpoint m = open("--merged", merged, follow)) {
            MergePlan plan = Planner.plan(b, a, new PlanOptions(null, PlanOptions.DEFAULT_MAX_SHARD_SIZE, parseTarget(options.to())));
            return VerifyResult.of(Verifier.verify(plan, m, options.rows(), options.tolerance()), options.rows());
        }
    }

    /** Lists the tensors of a model folder, an adapter folder (with each module's resolved rank, alpha and scale) or a safetensors file. */
    public static Inspection inspect(Path path) throws UserException, IOException {
        return inspect(path, false);
    }

    /**
     * As {@link #inspect(Path)}; {@code followSymlinks} reads a folder's files wherever their
     * symbolic links lead (by default a link may lead only inside its folder).
     */
    public static Inspection inspect(Path path, boolean followSymlinks) throws UserException, IOException {
        if (Files.isDirectory(path) && Files.exists(path.resolve(LoraAdapter.CONFIG))) {
            try (LoraAdapter a = openAdapter(path, followSymlinks)) {
                AdapterConfig c = a.config();
                Map<String, String> kinds = new TreeMap<>();
                for (AdapterKey k : a.keys().values()) {
                    kinds.merge(k.module(), k.kind().name().toLowerCase(Locale.ROOT), (x, y) -> x + "," + y);
                }
                List<Inspection.ModuleEntry> modules = new ArrayList<>();
                for (Map.Entry<String, String> e : kinds.entrySet()) {
                    String m = e.getKey();
                    boolean lora = e.getValue().contains("lora_") || e.getValue().contains("embedding_");
                    String parameter = lora ? ExpertParameters.parameterOf(c, m) : null;
                    String named = m;
                    if (parameter != null) {
                        // LoRA on a parameter (target_parameters): rank and alpha are the parameter's, lora_A holds r rows per expert
                        TensorInfo factorA = a.tensor(AdapterKey.PREFIX + m + ".lora_A.weight");
                        long experts = factorA == null || factorA.rank() != 2 ? 0 : factorA.dim(0) / c.rankFor(parameter);
                        named = parameter;
                        m = parameter + (experts > 1 ? " (" + experts + " experts)" : "");
                    }
                    modules.add(new Inspection.ModuleEntry(m, e.getValue(), lora ? c.rankFor(named) : null, lora ? c.alphaFor(named) : null,
                            lora ? c.scaleFor(named) : null));
                }
                Collection<TensorInfo> tensors = a.file().tensors();
                return new Inspection("adapter", path.toString(), null, null, null, total(tensors), entries(tensors), c.r(), c.alpha(),
                        c.useRslora(), c.useDora(), List.copyOf(modules), null, List.copyOf(c.warnings()));
            }
        }
        if (Files.isDirectory(path)) {
            try (Checkpoint c = open("inspect", path, followSymlinks)) {
                Collection<TensorInfo> tensors = c.tensors().values();
                return new Inspection("model", path.toString(), c.isSharded(), c.files().size(), null, total(tensors), entries(tensors), null, null,
                        null, null, null, quantization(c), List.copyOf(c.warnings()));
            }
        }
        try (SafetensorsFile f = SafetensorsFile.open(path)) {
            return new Inspection("safetensors", path.toString(), null, null, Map.copyOf(f.metadata()), total(f.tensors()), entries(f.tensors()),
                    null, null, null, null, null, null, List.of());
        }
    }

    /** The model's quantized weights as inspect describes them; null for a model without any. */
    private static Inspection.Quantization quantization(Checkpoint c) throws IOException {
        QuantizedModel q;
        try {
            q = WeightFormats.detect(c);
        } catch (QuantException e) {
            return new Inspection.Quantization(null, null, List.of(), e.getMessage());
        }
        if (!q.usesFormat()) {
            return null;
        }
        List<Inspection.QuantizedWeightEntry> weights = new ArrayList<>();
        for (QuantizedWeight w : q.weights().values()) {
            weights.add(new Inspection.QuantizedWeightEntry(w.weightName(), w.dtype().name(), MergeResult.shape(w.shape()), w.describe(),
                    List.copyOf(w.tensorNames())));
        }
        return new Inspection.Quantization(q.formatName(), List.copyOf(weights), List.copyOf(q.warnings()), null);
    }

    /**
     * Writes a bitsandbytes 4-bit (NF4 or FP4) checkpoint of the 16-bit model in {@code base} to {@code out}, as
     * transformers + bitsandbytes save one; {@code out} appears only when complete.
     */
    public static QuantizeResult quantize(Path base, Path out, QuantizeOptions options) throws UserException, IOException {
        if (!Nf4Codec.isValidBlocksize(options.blocksize())) {
            throw new UsageException("--blocksize " + options.blocksize() + ": expected a power of two from 32 to 4096 (bitsandbytes' default is 64)");
        }
        FourBitCode code = options.quantType() == null ? null : FourBitCode.of(options.quantType().toLowerCase(Locale.ROOT));
        if (code == null) {
            throw new UsageException("--quant-type " + options.quantType() + ": expected nf4 or fp4");
        }
        PrintStream log = options.log();
        try (AtomicOutput output = AtomicOutput.create(out, options.overwrite(), List.of(base));
             Checkpoint ckpt = openBase(base, options.followSymlinks())) {
            ModelQuantizer.Report report = QuantizeRunner.run(ckpt, output, new ModelQuantizer.Options(code, options.blocksize(), options.doubleQuant()),
                    line -> {
                        if (log != null) {
                            log.println(line);
                        }
                    });
            return QuantizeResult.of(report);
        } catch (UserException | IOException | RuntimeException e) {
            throw e;
        } catch (Exception e) {
            throw new IllegalStateException("quantize failed unexpectedly: " + e, e);
        }
    }

    /** {@code auto} (null: each tensor keeps its dtype) or a dtype name: f32, f16, bf16 and their aliases (fp32, float32, float, fp16, float16, half, bfloat16). */
    public static DType parseDtype(String s) throws UsageException {
        if (s == null || s.equalsIgnoreCase("auto")) {
            return null;
        }
        DType d = DType.parseUserName(s);
        if (d == null) {
            throw new UsageException("--dtype " + s + ": expected auto, f32, f16 or bf16 (or fp32, float32, fp16, float16, half, bfloat16)");
        }
        return d;
    }

    /** The --to choice: bf16, f16, f32 (and their aliases, as --dtype takes them) or a quantization; null when not given. */
    public static QuantTarget parseTarget(String to) throws UsageException {
        if (to == null) {
            return null;
        }
        QuantTarget target = QuantTarget.parse(to);
        if (target == null) {
            throw new UsageException("--to " + to + ": expected bf16, f16, f32, or a quantization (nf4, fp4, int8, fp8)");
        }
        return target;
    }

    /** A number of rows to check, N (1 or more) or {@code all} ({@link VerifyOptions#ALL_ROWS}); {@code option} names it in the message. */
    public static int parseRows(String option, String value) throws UsageException {
        if (value.equalsIgnoreCase("all")) {
            return VerifyOptions.ALL_ROWS;
        }
        try {
            int n = Integer.parseInt(value.trim());
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // the message below
        }
        throw new UsageException(option + " " + value + ": expected a positive number of rows, or all");
    }

    /** A size such as 5GB, 500MB, 2GiB or a byte count (decimal units, as transformers counts them). */
    public static long parseSize(String s) throws UsageException {
        String t = s.trim().toUpperCase(Locale.ROOT);
        long mult = 1;
        String[][] units = {{"GIB", "1073741824"}, {"MIB", "1048576"}, {"KIB", "1024"}, {"GB", "1000000000"}, {"MB", "1000000"},
                {"KB", "1000"}, {"B", "1"}};
        for (String[] u : units) {
            if (t.endsWith(u[0])) {
                mult = Long.parseLong(u[1]);
                t = t.substring(0, t.length() - u[0].length()).trim();
                break;
            }
        }
        try {
            double v = Double.parseDouble(t);
            if (v <= 0) {
                throw new NumberFormatException();
            }
            return (long) (v * mult);
        } catch (NumberFormatException e) {
            throw new UsageException("--max-shard-size " + s + ": expected a size such as 5GB or 500MB");
        }
    }

    private static Checkpoint openBase(Path dir, boolean followSymlinks) throws UserException {
        return open("--base", dir, followSymlinks);
    }

    /** Opens the model folder given as {@code option} (for messages: {@code --base}); a folder that cannot be read is a bad input. */
    public static Checkpoint openModel(String option, Path dir, boolean followSymlinks) throws UserException {
        return open(option, dir, followSymlinks);
    }

    private static Checkpoint open(String option, Path dir, boolean followSymlinks) throws UserException {
        try {
            return Checkpoint.open(dir, followSymlinks);
        } catch (SafetensorsException e) {
            throw e;
        } catch (IOException e) {
            throw new InputException(dir, option + ": " + e.getMessage(), e);
        }
    }

    /** Opens a PEFT adapter folder; a folder that cannot be read is a bad input. */
    public static LoraAdapter openAdapter(Path dir, boolean followSymlinks) throws UserException {
        try {
            return LoraAdapter.open(dir, followSymlinks);
        } catch (SafetensorsException | AdapterException e) {
            throw e;
        } catch (IOException e) {
            throw new InputException(dir, "--adapter: " + e.getMessage(), e);
        }
    }

    private static CompletableFuture<Backends.Choice> openInBackground(String device, int cpuThreads, boolean parallelWrites) {
        CompletableFuture<Backends.Choice> f = new CompletableFuture<>();
        Thread t = new Thread(() -> {
            try {
                f.complete(Backends.open(device, cpuThreads, parallelWrites));
            } catch (Throwable e) {
                f.completeExceptionally(e);
            }
        }, "loramerge-engine-start");
        t.setDaemon(true);
        t.start();
        return f;
    }

    /**
     * Whether a model written into {@code dir} with {@code tuning}'s writes takes one file's blocks from
     * several threads at once (mixed writes into tmpfs, or mapped ones), for which the GPU engine starts
     * more workers ({@link Backends#open(String, int, boolean)}).
     */
    public static boolean parallelWrites(Tuning tuning, Path dir) {
        return tuning.writes().resolve(dir).maps();
    }

    /** The streaming knobs set as system properties ({@link Tuning}); one set to something it cannot be is a usage error. */
    public static Tuning tuning() throws UsageException {
        try {
            return Tuning.current();
        } catch (IllegalArgumentException e) {
            throw new UsageException(e.getMessage() + " (a system property given to Java, e.g. in LORAMERGE_JAVA_OPTS)");
        }
    }

    /** The started engine, or what stopped it, as Backends.open throws it. */
    private static Backends.Choice await(CompletableFuture<Backends.Choice> opening) throws Exception {
        try {
            return opening.get();
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            if (c instanceof Exception) {
                throw (Exception) c;
            }
            if (c instanceof Error) {
                throw (Error) c;
            }
            throw e;
        }
    }

    private static long total(Collection<TensorInfo> tensors) {
        long n = 0;
        for (TensorInfo t : tensors) {
            n += t.sizeInBytes();
        }
        return n;
    }

    private static List<Inspection.TensorEntry> entries(Collection<TensorInfo> tensors) {
        List<Inspection.TensorEntry> out = new ArrayList<>();
        for (TensorInfo t : tensors) {
            out.add(new Inspection.TensorEntry(t.name(), t.dtype().name(), MergeResult.shape(t.shape()), t.sizeInBytes()));
        }
        return List.copyOf(out);
    }
}
