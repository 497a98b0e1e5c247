package org.loramerge.adapter;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import java.util.regex.PatternSyntaxException;

import static org.loramerge.adapter.AdapterException.Reason.INVALID_CONFIG;
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
    private final List<String> targetList;
    private final Pattern targetRegex;
    private final List<String> excludeList;
    private final Pattern excludeRegex;
    private final List<Integer> layersToTransform;
    private final List<String> layersPattern;
    private final boolean fanInFanOut;
    private final boolean useDora;
    private final boolean loraBias;
    private final boolean ensureWeightTying;
    private final String bias;
    private final List<String> modulesToSave;
    private final Map<String, List<Long>> tokenIndicesByModule;
    private final List<Long> tokenIndices;
    private final List<String> warnings;

    private AdapterConfig(Builder b) {
        this.path = b.path;
        this.r = b.r;
        this.alpha = b.alpha;
        this.useRslora = b.useRslora;
        this.rankPattern = b.rankPattern;
        this.alphaPattern = b.alphaPattern;
        this.targetList = b.targetList;
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
        this.tokenIndicesByModule = b.tokenIndicesByModule;
        this.tokenIndices = b.tokenIndices;
        this.warnings = b.warnings;
    }

    private static final class Builder {
        Path path;
        int r;
        double alpha;
        boolean useRslora;
        LinkedHashMap<String, Integer> rankPattern = new LinkedHashMap<>();
        LinkedHashMap<String, Double> alphaPattern = new LinkedHashMap<>();
        List<String> targetList;
        Pattern targetRegex;
        List<String> excludeList;
        Pattern excludeRegex;
        List<Integer> layersToTransform;
        List<String> layersPattern;
        boolean fanInFanOut;
        boolean useDora;
        boolean loraBias;
        boolean ensureWeightTying;
        String bias = "none";
        List<String> modulesToSave = new ArrayList<>();
        Map<String, List<Long>> tokenIndicesByModule;
        List<Long> tokenIndices;
        List<String> warnings = new ArrayList<>();
    }

    public static AdapterConfig read(Path file) throws AdapterException {
        if (!Files.exists(file)) {
            throw new AdapterException(INVALID_CONFIG, file, "not found; pass the folder PEFT's save_pretrained wrote (adapter_config.json + adapter_model.safetensors)");
        }
        JsonNode root;
        try {
            root = new ObjectMapper().enable(com.fasterxml.jackson.databind.DeserializationFeature.FAIL_ON_TRAILING_TOKENS).readTree(Files.readAllBytes(file));
        } catch (JsonProcessingException e) {
            throw new AdapterException(INVALID_CONFIG, file, "not valid JSON: " + e.getOriginalMessage());
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
        JsonNode tp = root.get("target_parameters");
        if (tp != null && !tp.isNull() && !(tp.isArray() && tp.isEmpty())) {
            throw new AdapterException(UNSUPPORTED, file, "target_parameters (LoRA on MoE expert parameters) is not supported yet; merge with PEFT for this adapter");
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
            throw new AdapterException(INVALID_CONFIG, file, "r is " + b.r + "; it must be positive");
        }
        b.alpha = number(file, root, "lora_alpha", 8);
        b.useRslora = bool(file, root, "use_rslora");
        b.fanInFanOut = bool(file, root, "fan_in_fan_out");
        b.useDora = bool(file, root, "use_dora");
        b.loraBias = bool(file, root, "lora_bias");
        b.ensureWeightTying = bool(file, root, "ensure_weight_tying");
        b.bias = text(file, root, "bias", "none");
        JsonNode rp = root.get("rank_pattern");
        if (rp != null && rp.isObject()) {
            for (Map.Entry<String, JsonNode> e : rp.properties()) {
                if (!e.getValue().canConvertToInt() || !e.getValue().isIntegralNumber()) {
                    throw new AdapterException(INVALID_CONFIG, file, "rank_pattern[\"" + e.getKey() + "\"] is not an integer");
                }
                compile(file, "rank_pattern", e.getKey());
                b.rankPattern.put(e.getKey(), e.getValue().intValue());
            }
        }
        JsonNode ap = root.get("alpha_pattern");
        if (ap != null && ap.isObject()) {
            for (Map.Entry<String, JsonNode> e : ap.properties()) {
                if (!e.getValue().isNumber()) {
                    throw new AdapterException(INVALID_CONFIG, file, "alpha_pattern[\"" + e.getKey() + "\"] is not a number");
                }
                compile(file, "alpha_pattern", e.getKey());
                b.alphaPattern.put(e.getKey(), e.getValue().doubleValue());
            }
        }
        JsonNode tm = root.get("target_modules");
        if (tm != null && tm.isTextual()) {
            b.targetRegex = compile(file, "target_modules", tm.textValue());
        } else if (tm != null && tm.isArray()) {
            b.targetList = strings(file, tm, "target_modules");
        }
        JsonNode em = root.get("exclude_modules");
        if (em != null && em.isTextual()) {
            b.excludeRegex = compile(file, "exclude_modules", em.textValue());
        } else if (em != null && em.isArray()) {
            b.excludeList = strings(file, em, "exclude_modules");
        }
        JsonNode lt = root.get("layers_to_transform");
        if (lt != null && !lt.isNull()) {
            b.layersToTransform = new ArrayList<>();
            if (lt.isIntegralNumber()) {
                b.layersToTransform.add(lt.intValue());
            } else if (lt.isArray()) {
                for (JsonNode n : lt) {
                    if (!n.isIntegralNumber()) {
                        throw new AdapterException(INVALID_CONFIG, file, "layers_to_transform holds " + n + ", not an integer");
                    }
                    b.layersToTransform.add(n.intValue());
                }
            } else {
                throw new AdapterException(INVALID_CONFIG, file, "layers_to_transform is neither an integer nor a list");
            }
        }
        JsonNode lp = root.get("layers_pattern");
        if (lp != null && lp.isTextual()) {
            b.layersPattern = List.of(lp.textValue());
        } else if (lp != null && lp.isArray()) {
            b.layersPattern = strings(file, lp, "layers_pattern");
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

    private static Pattern compile(Path file, String field, String regex) throws AdapterException {
        try {
            return Pattern.compile(regex);
        } catch (PatternSyntaxException e) {
            throw new AdapterException(INVALID_CONFIG, file, field + " holds \"" + regex + "\", which is not a regular expression loramerge can read: " + e.getDescription());
        }
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
            if (!n.isIntegralNumber() || n.longValue() < 0) {
                throw new AdapterException(INVALID_CONFIG, file, field + " holds " + n + ", not a token id");
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

    /** peft utils/other.py get_pattern_key: the first key, in JSON order, with re.match(rf"(.*\.)?({key})$", name). */
    static String patternKey(Iterable<String> keys, String moduleName) {
        for (String key : keys) {
            if (Pattern.compile("(.*\\.)?(" + key + ")$").matcher(moduleName).lookingAt()) {
                return key;
            }
        }
        return null;
    }

    /** The rank PEFT gives {@code moduleName}: rank_pattern's first match, else r. */
    public int rankFor(String moduleName) {
        String key = patternKey(rankPattern.keySet(), moduleName);
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
        String key = patternKey(alphaPattern.keySet(), moduleName);
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
     * Whether PEFT's targeting would wrap {@code moduleName} (peft tuners_utils.py
     * check_target_module_exists): exclusion first, then target_modules (a string is a full
     * regex match, a list matches a name or a suffix on a dot boundary), then the layer filter.
     */
    public boolean targets(String moduleName) {
        if (excludeRegex != null && excludeRegex.matcher(moduleName).matches()) {
            return false;
        }
        if (excludeList != null && matchesList(excludeList, moduleName)) {
            return false;
        }
        boolean found;
        if (targetRegex != null && targetRegex.pattern().equals("all-linear")) {
            found = true; // PEFT expands it when saving; an unexpanded one targets every layer that has weights here
        } else if (targetRegex != null) {
            found = targetRegex.matcher(moduleName).matches();
        } else if (targetList != null) {
            found = matchesList(targetList, moduleName);
        } else {
            found = false;
        }
        if (found && layersToTransform != null) {
            Integer layer = layerIndex(moduleName);
            found = layer != null && layersToTransform.contains(layer);
        }
        return found;
    }

    private Integer layerIndex(String moduleName) {
        java.util.regex.Matcher m = null;
        if (layersPattern == null || layersPattern.isEmpty()) {
            m = Pattern.compile(".*?\\.[^.]*\\.(\\d+)\\.").matcher(moduleName); // the first numbered segment, as PEFT 0.21
            if (!m.lookingAt()) {
                return null;
            }
        } else {
            boolean hit = false;
            for (String p : layersPattern) {
                m = Pattern.compile("(?:^|.*?\\.)" + p + "\\.(\\d+)\\.").matcher(moduleName);
                if (m.lookingAt()) {
                    hit = true;
                    break;
                }
            }
            if (!hit) {
                return null;
            }
        }
        return Integer.valueOf(m.group(1));
    }

    private static boolean matchesList(List<String> list, String moduleName) {
        for (String t : list) {
            if (moduleName.equals(t) || moduleName.endsWith("." + t)) {
                return true;
            }
        }
        return false;
    }

    /** Whether {@code moduleName} is one of modules_to_save (a name or a dot-boundary suffix, as PEFT matches it). */
    public boolean savesModule(String moduleName) {
        return matchesList(modulesToSave, moduleName);
    }

    /** The token ids of trainable_token_indices for this embedding module, or null. */
    public List<Long> tokenIndicesFor(String moduleName, boolean isInputEmbedding) {
        if (tokenIndicesByModule != null) {
            for (Map.Entry<String, List<Long>> e : tokenIndicesByModule.entrySet()) {
                if (moduleName.equals(e.getKey()) || moduleName.endsWith("." + e.getKey())) {
                    return e.getValue();
                }
            }
            return null;
        }
        return tokenIndices;
    }

    public boolean hasTrainableTokens() {
        return tokenIndices != null || tokenIndicesByModule != null;
    }

    public Path path() {
        return path;
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
