package org.loramerge.adapter;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.math.BigInteger;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import org.loramerge.format.InputFolder;
import org.loramerge.format.SafetensorsException;

import static org.loramerge.adapter.AdapterException.Reason.INVALID_CONFIG;
import static org.loramerge.adapter.AdapterException.Reason.REGEX;
import static org.loramerge.adapter.AdapterException.Reason.UNSUPPORTED;

/**
 * {@code adapter_config.json} of a PEFT LoRA adapter: the scale, the targeting rules and the
 * variant flags, applied the way PEFT applies them (peft tuners/lora/config.py, tuners/tuners_utils.py
 * {@code check_target_module_exists}, utils/other.py {@code get_pattern_key}).
 */
public final class AdapterConfig {
    private final Path path;
    private final int r;
    private final double alpha;
    private final boolean useRslora;
    private final LinkedHashMap<String, Integer> rankPattern;
    private final LinkedHashMap<String, Double> alphaPattern;
    private final Map<String, PeftRegex> rankKeys;
    private final Map<String, PeftRegex> alphaKeys;
    private final List<String> targetList;
    private final String targetString;
    private final PeftRegex targetRegex;
    private final List<String> excludeList;
    private final PeftRegex excludeRegex;
    private final List<BigInteger> layersToTransform;
    private final List<PeftRegex> layersPattern;
    /** rank_pattern's and alpha_pattern's key per module name, as found once (Optional.empty(): none matches). */
    private final Map<String, Optional<String>> rankKeyOf = new ConcurrentHashMap<>();
    private final Map<String, Optional<String>> alphaKeyOf = new ConcurrentHashMap<>();
    private final boolean fanInFanOut;
    private final boolean useDora;
    private final boolean loraBias;
    private final boolean ensureWeightTying;
    private final String bias;
    private final List<String> modulesToSave;
    private final List<String> targetParameters;
    private final Map<String, List<Long>> tokenIndicesByModule;
    private final List<Long> tokenIndices;
    private final List<String> warnings;
    private final String baseModelNameOrPath;
    /** The file's JSON object as read, for tools that write a config of their own from it. */
    private final ObjectNode json;

    private AdapterConfig(Builder b) {
        this.path = b.path;
        this.json = b.json;
        this.r = b.r;
        this.alpha = b.alpha;
        this.useRslora = b.useRslora;
        this.rankPattern = b.rankPattern;
        this.alphaPattern = b.alphaPattern;
        this.rankKeys = b.rankKeys;
        this.alphaKeys = b.alphaKeys;
        this.targetList = b.targetList;
        this.targetString = b.targetString;
        this.targetRegex = b.targetRegex;
        this.excludeList = b.excludeList;
        this.excludeRegex = b.excludeRegex;
        this.layersToTransform = b.layersToTransform;
        this.layersPattern = b.layersPattern;
        this.fanInFanOut = b.fanInFanOut;
        this.useDora = b.useDora;
        this.loraBias = b.loraBias;
        this.ensureWeightTying = b.ensureWeightTying;
        this.bias = b.bias;
        this.modulesToSave = b.modulesToSave;
        this.targetParameters = b.targetParameters;
        this.tokenIndicesByModule = b.tokenIndicesByModule;
        this.tokenIndices = b.tokenIndices;
        this.warnings = b.warnings;
        this.baseModelNameOrPath = b.baseModelNameOrPath;
    }

    private static final class Builder {
        Path path;
        ObjectNode json;
        String baseModelNameOrPath;
        int r;
        double alpha;
        boolean useRslora;
        LinkedHashMap<String, Integer> rankPattern = new LinkedHashMap<>();
        LinkedHashMap<String, Double> alphaPattern = new LinkedHashMap<>();
        Map<String, PeftRegex> rankKeys = new LinkedHashMap<>();
        Map<String, PeftRegex> alphaKeys = new LinkedHashMap<>();
        List<String> targetList;
        String targetString;
        PeftRegex targetRegex;
        List<String> excludeList;
        PeftRegex excludeRegex;
        /** Python ints, of any size: a value past an int is compared as it stands, never cut to 32 bits. */
        List<BigInteger> layersToTransform;
        List<PeftRegex> layersPattern;
        /** Instructions of every compiled pattern together: the bound on matching time. */
        long regexSize;
        boolean fanInFanOut;
        boolean useDora;
        boolean loraBias;
        boolean ensureWeightTying;
        String bias = "none";
        List<String> modulesToSave = new ArrayList<>();
        List<String> targetParameters = List.of();
        Map<String, List<Long>> tokenIndicesByModule;
        List<Long> tokenIndices;
        List<String> warnings = new ArrayList<>();
    }

    /**
     * Reads {@code adapter_config.json}: a regular file of at most {@link InputFolder#MAX_CONFIG_BYTES}.
     *
     * @throws SafetensorsException when the file is not a regular file or too large
     */
    public static AdapterConfig read(Path file) throws AdapterException, SafetensorsException {
        if (!Files.exists(file, LinkOption.NOFOLLOW_LINKS)) {
            throw new AdapterException(INVALID_CONFIG, file, "not found; pass the folder PEFT's save_pretrained wrote (adapter_config.json + adapter_model.safetensors)");
        }
        byte[] bytes = InputFolder.readBounded(file, InputFolder.MAX_CONFIG_BYTES, "an adapter_config.json");
        JsonNode root;
        try {
            root = new ObjectMapper().enable(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS).readTree(bytes);
        } catch (JsonProcessingException e) {
            throw new AdapterException(INVALID_CONFIG, file, "not valid JSON: " + e.getOriginalMessage() + "; fix it, or save the adapter again with PEFT");
        } catch (IOException e) {
            throw new AdapterException(INVALID_CONFIG, file, "cannot read: " + e.getMessage());
        }
        if (root == null || !root.isObject()) {
            throw new AdapterException(INVALID_CONFIG, file, "not a JSON object");
        }
        return parse(file, root);
    }

    static AdapterConfig parse(Path file, JsonNode root) throws AdapterException {
        Builder b = new Builder();
        b.path = file;
        b.json = root.isObject() ? ((ObjectNode) root).deepCopy() : null;
        LoraConfigFields.check(file, root);
        JsonNode baseName = root.get("base_model_name_or_path");
        b.baseModelNameOrPath = baseName != null && baseName.isTextual() ? baseName.textValue() : null; // informative only: never checked
        String peftType = text(file, root, "peft_type", "LORA");
        if (!peftType.equals("LORA")) {
            throw new AdapterException(UNSUPPORTED, file, "peft_type is " + peftType + "; loramerge merges LoRA adapters only");
        }
        // PEFT refuses to merge these, or their merge needs state that the adapter files do not hold
        for (String blocker : new String[] {"layer_replication", "alora_invocation_tokens", "arrow_config"}) {
            JsonNode n = root.get(blocker);
            if (n != null && !n.isNull() && !(n.isArray() && n.isEmpty())) {
                throw new AdapterException(UNSUPPORTED, file, blocker + " is set; PEFT cannot merge such an adapter into plain weights, so neither can loramerge");
            }
        }
        // LoRA variants whose change to the weight is not s·B·A (peft tuners/lora/variants.py)
        if (root.path("use_qalora").asBoolean(false)) {
            throw new AdapterException(UNSUPPORTED, file, "use_qalora is true: QA-LoRA's lora_A acts on group-pooled inputs, so its change to a weight "
                    + "is not s·B·A, and PEFT cannot merge it either; use the adapter unmerged, or retrain without use_qalora");
        }
        for (String[] variant : new String[][] {
                {"use_bdlora", "BD-LoRA (block-diagonal factors sharded across devices)"},
                {"kasa_config", "KaSA (which truncates the base weight's singular values when it merges)"}}) {
            JsonNode n = root.get(variant[0]);
            if (n != null && !n.isNull()) {
                throw new AdapterException(UNSUPPORTED, file, variant[0] + " is set: " + variant[1] + " merges differently from plain LoRA and "
                        + "loramerge does not reproduce it; use PEFT to merge this adapter");
            }
        }
        JsonNode tp = root.get("target_parameters");
        if (tp != null && tp.isArray() && !tp.isEmpty()) {
            b.targetParameters = List.copyOf(strings(file, tp, "target_parameters"));
            // peft tuners/lora/layer.py ParamWrapper.__init__ raises on each of these, so PEFT cannot have saved such a config
            for (String flag : new String[] {"use_dora", "lora_bias", "fan_in_fan_out"}) {
                if (root.path(flag).asBoolean(false)) {
                    throw new AdapterException(INVALID_CONFIG, file, "target_parameters is set together with " + flag + ": true, which PEFT's "
                            + "ParamWrapper (LoRA on a parameter) refuses, so PEFT cannot have saved this config; fix " + flag + " or target_parameters");
                }
            }
        }
        JsonNode init = root.get("init_lora_weights");
        if (init != null && init.isTextual()) {
            String v = init.textValue();
            if (v.startsWith("pissa") || v.equals("olora") || v.equals("corda") || v.equals("lora_ga")) {
                b.warnings.add("init_lora_weights is \"" + v + "\": such an adapter applies to a modified base unless it was converted to plain LoRA when saved; "
                        + "check the merged model's outputs against base+adapter");
            }
        }
        b.r = intValue(file, root, "r", 8);
        if (b.r <= 0) {
            throw new AdapterException(INVALID_CONFIG, file, "r is " + b.r + "; it must be positive: fix it to the rank the adapter was trained with");
        }
        double dropout = number(file, root, "lora_dropout", 0);
        if (!(dropout >= 0 && dropout <= 1)) {
            throw new AdapterException(INVALID_CONFIG, file, "lora_dropout is " + dropout + ", but a dropout probability lies from 0 to 1 (torch.nn.Dropout refuses it); fix the field");
        }
        b.alpha = number(file, root, "lora_alpha", 8);
        b.useRslora = bool(file, root, "use_rslora");
        b.fanInFanOut = bool(file, root, "fan_in_fan_out");
        b.useDora = bool(file, root, "use_dora");
        b.loraBias = bool(file, root, "lora_bias");
        b.ensureWeightTying = bool(file, root, "ensure_weight_tying");
        b.bias = text(file, root, "bias", "none");
        if (!List.of("none", "all", "lora_only").contains(b.bias)) {
            throw new AdapterException(INVALID_CONFIG, file, "bias is \"" + b.bias + "\", but PEFT knows only \"none\", \"all\" and \"lora_only\"; fix the field");
        }
        JsonNode rp = root.get("rank_pattern");
        if (rp != null && rp.isObject()) {
            for (Map.Entry<String, JsonNode> e : rp.properties()) {
                if (!e.getValue().canConvertToInt() || e.getValue().intValue() <= 0) {
                    throw new AdapterException(INVALID_CONFIG, file, "rank_pattern[\"" + e.getKey() + "\"] is " + e.getValue()
                            + ", not a positive rank; fix it to the rank that module was trained with");
                }
                b.rankKeys.put(e.getKey(), compileKey(b, "rank_pattern", e.getKey()));
                b.rankPattern.put(e.getKey(), e.getValue().intValue());
            }
        }
        JsonNode ap = root.get("alpha_pattern");
        if (ap != null && ap.isObject()) {
            for (Map.Entry<String, JsonNode> e : ap.properties()) {
                if (!e.getValue().isNumber()) {
                    throw new AdapterException(INVALID_CONFIG, file, "alpha_pattern[\"" + e.getKey() + "\"] is not a number");
                }
                b.alphaKeys.put(e.getKey(), compileKey(b, "alpha_pattern", e.getKey()));
                b.alphaPattern.put(e.getKey(), e.getValue().doubleValue());
            }
        }
        JsonNode tm = root.get("target_modules");
        if (tm != null && tm.isTextual()) {
            b.targetString = tm.textValue();
            b.targetRegex = compile(b, "target_modules", "", tm.textValue(), "");
        } else if (tm != null && tm.isArray()) {
            b.targetList = strings(file, tm, "target_modules");
        }
        JsonNode em = root.get("exclude_modules");
        if (em != null && em.isTextual()) {
            b.excludeRegex = compile(b, "exclude_modules", "", em.textValue(), "");
        } else if (em != null && em.isArray()) {
            b.excludeList = strings(file, em, "exclude_modules");
        }
        JsonNode lt = root.get("layers_to_transform");
        boolean layersGiven = lt != null && !lt.isNull();
        if (layersGiven) {
            b.layersToTransform = new ArrayList<>();
            if (lt.isIntegralNumber()) {
                b.layersToTransform.add(lt.bigIntegerValue());
            } else if (lt.isArray()) {
                for (JsonNode n : lt) {
                    if (!n.isIntegralNumber()) {
                        throw new AdapterException(INVALID_CONFIG, file, "layers_to_transform holds " + n + ", not an integer");
                    }
                    b.layersToTransform.add(n.bigIntegerValue());
                }
            } else {
                throw new AdapterException(INVALID_CONFIG, file, "layers_to_transform is neither an integer nor a list");
            }
            if (b.layersToTransform.isEmpty()) {
                b.layersToTransform = null; // peft tuners_utils.py: an empty list uses no layer index (is_using_layer_indexes)
            }
        }
        JsonNode lp = root.get("layers_pattern");
        if (lp != null && (lp.isTextual() || lp.isArray())) {
            b.layersPattern = new ArrayList<>();
            for (String p : lp.isTextual() ? List.of(lp.textValue()) : strings(file, lp, "layers_pattern")) {
                b.layersPattern.add(compile(b, "layers_pattern", LAYER_PREFIX, p, LAYER_SUFFIX));
            }
        }
        // peft tuners/lora/config.py LoraConfig.__post_init__ raises on these, so PEFT cannot have saved or load such a config
        if (tm != null && tm.isTextual() && (layersGiven || lp != null && !lp.isNull())) {
            throw new AdapterException(INVALID_CONFIG, file, (layersGiven ? "layers_to_transform" : "layers_pattern") + " is set, but target_modules is "
                    + "a string (a regular expression, or all-linear), which PEFT refuses: name the layers in the regular expression, or give "
                    + "target_modules as a list of module names");
        }
        boolean patternGiven = lp != null && (lp.isTextual() && !lp.textValue().isEmpty() || lp.isArray() && !lp.isEmpty());
        if (patternGiven && !layersGiven) {
            throw new AdapterException(INVALID_CONFIG, file, "layers_pattern is set without layers_to_transform, which PEFT refuses: add the layer "
                    + "indices the adapter was trained on as layers_to_transform, or remove layers_pattern");
        }
        JsonNode ms = root.get("modules_to_save");
        if (ms != null && ms.isArray()) {
            b.modulesToSave = strings(file, ms, "modules_to_save");
        }
        JsonNode tti = root.get("trainable_token_indices");
        if (tti != null && tti.isArray()) {
            b.tokenIndices = longs(file, tti, "trainable_token_indices");
        } else if (tti != null && tti.isObject()) {
            b.tokenIndicesByModule = new LinkedHashMap<>();
            for (Map.Entry<String, JsonNode> e : tti.properties()) {
                b.tokenIndicesByModule.put(e.getKey(), longs(file, e.getValue(), "trainable_token_indices." + e.getKey()));
            }
        }
        return new AdapterConfig(b);
    }

    /** peft utils/other.py get_pattern_key wraps each rank_pattern / alpha_pattern key: re.match(rf"(.*\.)?({key})$", name). */
    private static final String KEY_PREFIX = "(.*\\.)?(";
    private static final String KEY_SUFFIX = ")$";
    /** peft 0.21 tuners_utils.py: the layer index after layers_pattern, re.match(rf"(?:^|.*?\.){pattern}\.(\d+)\.", name). */
    private static final String LAYER_PREFIX = "(?:^|.*?\\.)";
    private static final String LAYER_SUFFIX = "\\.(\\d+)\\.";
    /** peft 0.21 tuners_utils.py: without layers_pattern, the first numbered segment is the layer index. */
    private static final PeftRegex FIRST_NUMBERED_SEGMENT;

    static {
        try {
            FIRST_NUMBERED_SEGMENT = PeftRegex.compile(".*?\\.[^.]*\\.(\\d+)\\.");
        } catch (PeftRegex.Refused e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * Instructions of all patterns of one config together (each is also held to {@link PeftRegex#MAX_SIZE}).
     * Matching costs at most this many steps per character of a module name, per module. A plain
     * per-module key such as {@code model.layers.10.self_attn.q_proj} compiles to about 40
     * instructions, so a rank_pattern of one key per module fits for some 2,000 modules.
     */
    static final long MAX_TOTAL_REGEX_SIZE = 100_000;

    private static PeftRegex compileKey(Builder b, String field, String key) throws AdapterException {
        return compile(b, field, KEY_PREFIX, key, KEY_SUFFIX);
    }

    /** A pattern of {@code field}, compiled for linear-time matching, or the reason it is refused. */
    private static PeftRegex compile(Builder b, String field, String prefix, String regex, String suffix) throws AdapterException {
        String where = field + (field.endsWith("_pattern") && !field.equals("layers_pattern") ? " key \"" : " pattern \"") + regex + "\"";
        PeftRegex compiled;
        try {
            compiled = PeftRegex.compile(prefix, regex, suffix);
        } catch (PeftRegex.Refused e) {
            throw new AdapterException(REGEX, b.path, where + " cannot be used: " + e.getMessage()
                    + ". Fix the pattern in adapter_config.json (PEFT reads it as a Python regular expression)");
        }
        b.regexSize += compiled.size();
        if (b.regexSize > MAX_TOTAL_REGEX_SIZE) {
            throw new AdapterException(REGEX, b.path, "the patterns of target_modules, exclude_modules, layers_pattern, rank_pattern and alpha_pattern "
                    + "expand to more than " + MAX_TOTAL_REGEX_SIZE + " instructions together (reached at " + where + "); matching them against "
                    + "every module would take too long. Simplify or merge the patterns in adapter_config.json");
        }
        return compiled;
    }

    private static List<String> strings(Path file, JsonNode arr, String field) throws AdapterException {
        List<String> out = new ArrayList<>();
        for (JsonNode n : arr) {
            if (!n.isTextual()) {
                throw new AdapterException(INVALID_CONFIG, file, field + " holds " + n + ", not a string");
            }
            out.add(n.textValue());
        }
        return out;
    }

    private static List<Long> longs(Path file, JsonNode arr, String field) throws AdapterException {
        if (!arr.isArray()) {
            throw new AdapterException(INVALID_CONFIG, file, field + " is not a list of token ids");
        }
        List<Long> out = new ArrayList<>();
        for (JsonNode n : arr) {
            // canConvertToLong: a BigInteger's longValue() keeps its low 64 bits, so 2^64 would have become token 0
            if (!n.isIntegralNumber() || !n.canConvertToLong() || n.longValue() < 0) {
                throw new AdapterException(INVALID_CONFIG, file, field + " holds " + n + ", not a token id; fix it to the ids the adapter was trained on");
            }
            out.add(n.longValue());
        }
        return out;
    }

    private static String text(Path file, JsonNode root, String field, String dflt) throws AdapterException {
        JsonNode n = root.get(field);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isTextual()) {
            throw new AdapterException(INVALID_CONFIG, file, field + " is " + n + ", not a string");
        }
        return n.textValue();
    }

    private static boolean bool(Path file, JsonNode root, String field) throws AdapterException {
        JsonNode n = root.get(field);
        if (n == null || n.isNull()) {
            return false;
        }
        if (!n.isBoolean()) {
            throw new AdapterException(INVALID_CONFIG, file, field + " is " + n + ", not true or false");
        }
        return n.booleanValue();
    }

    private static int intValue(Path file, JsonNode root, String field, int dflt) throws AdapterException {
        JsonNode n = root.get(field);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isIntegralNumber() || !n.canConvertToInt()) {
            throw new AdapterException(INVALID_CONFIG, file, field + " is " + n + ", not an integer");
        }
        return n.intValue();
    }

    private static double number(Path file, JsonNode root, String field, double dflt) throws AdapterException {
        JsonNode n = root.get(field);
        if (n == null || n.isNull()) {
            return dflt;
        }
        if (!n.isNumber()) {
            throw new AdapterException(INVALID_CONFIG, file, field + " is " + n + ", not a number");
        }
        return n.doubleValue();
    }

    /** peft utils/other.py get_pattern_key: the first key, in JSON order, with re.match(rf"(.*\.)?({key})$", name); null when none matches. */
    static String patternKey(Map<String, PeftRegex> keys, String moduleName) {
        for (Map.Entry<String, PeftRegex> e : keys.entrySet()) {
            if (e.getValue().matchesAtStart(moduleName)) {
                return e.getKey();
            }
        }
        return null;
    }

    /** The rank PEFT gives {@code moduleName}: rank_pattern's first match, else r. */
    public int rankFor(String moduleName) {
        String key = rankKeyOf.computeIfAbsent(moduleName, m -> Optional.ofNullable(patternKey(rankKeys, m))).orElse(null);
        return key == null ? r : rankPattern.get(key);
    }

    /** The largest rank of any module: r, or a larger rank_pattern value (what PEFT's add_weighted_adapter takes as the adapter's rank). */
    public int maxRank() {
        int m = r;
        for (int v : rankPattern.values()) {
            m = Math.max(m, v);
        }
        return m;
    }

    /** The alpha PEFT gives {@code moduleName}: alpha_pattern's first match, else lora_alpha. */
    public double alphaFor(String moduleName) {
        String key = alphaKeyOf.computeIfAbsent(moduleName, m -> Optional.ofNullable(patternKey(alphaKeys, m))).orElse(null);
        return key == null ? alpha : alphaPattern.get(key);
    }

    /**
     * The scale s of {@code moduleName}: lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA,
     * computed in double as PEFT computes it in Python (peft tuners/lora/layer.py update_layer).
     */
    public double scaleFor(String moduleName) {
        int rank = rankFor(moduleName);
        double a = alphaFor(moduleName);
        return useRslora ? a / Math.sqrt(rank) : a / rank;
    }

    /**
     * Whether PEFT's targeting would wrap {@code moduleName} (peft 0.21 tuners_utils.py
     * check_target_module_exists): exclusion first, then target_modules: a string is a full regex
     * match; a list entry equal to the whole name matches it as it is, and an entry the name ends
     * with after a dot matches it if the layer filter (layers_to_transform) keeps its layer.
     */
    public boolean targets(String moduleName) {
        if (excludeRegex != null && excludeRegex.fullMatch(moduleName)) {
            return false;
        }
        if (excludeList != null && matchesList(excludeList, moduleName)) {
            return false;
        }
        if (targetRegex != null) {
            // PEFT expands all-linear when saving; an unexpanded one targets every layer that has weights here
            return targetString.equals("all-linear") || targetRegex.fullMatch(moduleName);
        }
        if (targetList == null) {
            return false;
        }
        if (targetList.contains(moduleName)) {
            return true; // "specified directly in target_modules": no layer filter
        }
        boolean found = matchesList(targetList, moduleName);
        if (found && layersToTransform != null) {
            BigInteger layer = layerIndex(moduleName);
            found = layer != null && layersToTransform.contains(layer);
        }
        return found;
    }

    private BigInteger layerIndex(String moduleName) {
        String digits = null;
        if (layersPattern == null || layersPattern.isEmpty()) {
            digits = FIRST_NUMBERED_SEGMENT.groupAtStart(moduleName, 1);
        } else {
            for (PeftRegex p : layersPattern) {
                digits = p.groupAtStart(moduleName, 1);
                if (digits != null) {
                    break;
                }
            }
        }
        // Python's int() of \d+: any decimal digits (BigInteger reads them as Character.digit does), and any size
        try {
            return digits == null ? null : new BigInteger(digits);
        } catch (NumberFormatException e) {
            return null;
        }
    }

    private static boolean matchesList(List<String> list, String moduleName) {
        for (String t : list) {
            if (moduleName.equals(t) || moduleName.endsWith("." + t)) {
                return true;
            }
        }
        return false;
    }

    /** target_parameters: names or dot-boundary suffixes of parameters PEFT wraps with ParamWrapper (LoRA on MoE experts); empty when unset. */
    public List<String> targetParameters() {
        return targetParameters;
    }

    /**
     * Whether PEFT's target_parameters wrap the parameter {@code parameterName} (a full name such as
     * {@code model.layers.0.mlp.experts.gate_up_proj}): peft tuners_utils.py _inject_parameters
     * matches each parameter's full name against each entry, equal or ending with "." + entry; no
     * other targeting rule applies to parameters.
     */
    public boolean targetsParameter(String parameterName) {
        return matchesList(targetParameters, parameterName);
    }

    /**
     * Whether {@code moduleName} is one of modules_to_save: as PEFT's _set_trainable (peft utils/other.py)
     * matches them, a name that ends with an entry, on a dot boundary or not.
     */
    public boolean savesModule(String moduleName) {
        for (String m : modulesToSave) {
            if (moduleName.endsWith(m)) {
                return true;
            }
        }
        return false;
    }

    /**
     * The token ids of trainable_token_indices for this embedding module, or null. A list is for the
     * input embedding; an object's keys match module names as PEFT's _set_trainable matches them (a
     * name that ends with the key, on a dot boundary or not), each key wrapping what it matches in
     * turn, so a later key's ids replace an earlier one's.
     */
    public List<Long> tokenIndicesFor(String moduleName, boolean isInputEmbedding) {
        if (tokenIndicesByModule != null) {
            List<Long> ids = null;
            for (Map.Entry<String, List<Long>> e : tokenIndicesByModule.entrySet()) {
                if (moduleName.endsWith(e.getKey())) {
                    ids = e.getValue();
                }
            }
            return ids;
        }
        return tokenIndices;
    }

    public boolean hasTrainableTokens() {
        return tokenIndices != null || tokenIndicesByModule != null;
    }

    public Path path() {
        return path;
    }

    /** base_model_name_or_path as PEFT recorded it (a hub id or the path the adapter was trained from), or null. */
    /** A copy of adapter_config.json's JSON object, as read (null for a config built in code). */
    public ObjectNode json() {
        return json == null ? null : json.deepCopy();
    }

    public String baseModelNameOrPath() {
        return baseModelNameOrPath;
    }

    /** The target_modules list as written (empty for a regex or all-linear target rule). */
    public List<String> targetModules() {
        return targetList == null ? List.of() : targetList;
    }

    public int r() {
        return r;
    }

    public double alpha() {
        return alpha;
    }

    public boolean useRslora() {
        return useRslora;
    }

    public boolean fanInFanOut() {
        return fanInFanOut;
    }

    public boolean useDora() {
        return useDora;
    }

    /** PEFT's ensure_weight_tying: a targeted tied embedding also wraps its tied output layer, and the other way round. */
    public boolean ensureWeightTying() {
        return ensureWeightTying;
    }

    public boolean loraBias() {
        return loraBias;
    }

    public String bias() {
        return bias;
    }

    public List<String> modulesToSave() {
        return modulesToSave;
    }

    public List<String> warnings() {
        return warnings;
    }

    public boolean hasTargetRule() {
        return targetRegex != null || targetList != null;
    }
}
