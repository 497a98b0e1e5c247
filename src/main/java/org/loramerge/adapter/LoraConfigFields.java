package org.loramerge.adapter;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.function.Predicate;

import static org.loramerge.adapter.AdapterException.Reason.INVALID_CONFIG;

/**
 * The JSON types of {@code adapter_config.json}'s fields, as PEFT 0.21 declares them (peft
 * tuners/lora/config.py {@code LoraConfig}, config.py {@code PeftConfig}). PEFT does not check them
 * when it loads a config, so a wrong type there either fails later inside PEFT or, worse, is used
 * as it is ({@code "target_modules": "q"} is a regex, {@code "modules_to_save": "lm_head"} a list
 * of letters). Here a field of the wrong type stops the merge and names the type PEFT expects.
 * Fields PEFT does not know are left alone: PEFT drops them with a warning, and they cannot change
 * the merge.
 */
final class LoraConfigFields {
    /**
     * @param peftType the annotation in PEFT's source
     * @param nullable whether null is harmless there: Optional fields, and flags PEFT only tests for truth
     * @param accepts  which JSON values fit
     * @param words    what fits, for the message
     */
    private record Field(String peftType, boolean nullable, Predicate<JsonNode> accepts, String words) {
    }

    private static final Predicate<JsonNode> INT = JsonNode::isIntegralNumber;
    private static final Predicate<JsonNode> NUMBER = JsonNode::isNumber;
    private static final Predicate<JsonNode> BOOL = JsonNode::isBoolean;
    private static final Predicate<JsonNode> STR = JsonNode::isTextual;
    private static final Predicate<JsonNode> DICT = JsonNode::isObject;

    private static Predicate<JsonNode> listOf(Predicate<JsonNode> element) {
        return n -> {
            if (!n.isArray()) {
                return false;
            }
            for (JsonNode e : n) {
                if (!element.test(e)) {
                    return false;
                }
            }
            return true;
        };
    }

    private static Predicate<JsonNode> dictOf(Predicate<JsonNode> value) {
        return n -> {
            if (!n.isObject()) {
                return false;
            }
            for (Map.Entry<String, JsonNode> e : n.properties()) {
                if (!value.test(e.getValue())) {
                    return false;
                }
            }
            return true;
        };
    }

    private static final Map<String, Field> FIELDS = new LinkedHashMap<>();

    private static void field(String name, String peftType, boolean nullable, Predicate<JsonNode> accepts, String words) {
        FIELDS.put(name, new Field(peftType, nullable, accepts, words));
    }

    static {
        String modules = "Optional[Union[list[str], str]]";
        String names = "a list of module names or one regular expression (a string), or null";
        String flag = "true or false";
        field("peft_type", "str", false, STR, "\"LORA\"");
        field("task_type", "Optional[str]", true, STR, "a string such as \"CAUSAL_LM\", or null");
        field("base_model_name_or_path", "Optional[str]", true, STR, "a model name or path, or null");
        field("revision", "Optional[str]", true, STR, "a string or null");
        field("inference_mode", "bool", true, BOOL, flag);
        field("auto_mapping", "Optional[dict]", true, DICT, "an object or null");
        field("peft_version", "Optional[str]", true, STR, "a version string or null");
        field("r", "int", false, INT, "a positive integer");
        field("target_modules", modules, true, STR.or(listOf(STR)), names);
        field("exclude_modules", modules, true, STR.or(listOf(STR)), names);
        field("lora_alpha", "int (a float works too)", false, NUMBER, "a number");
        field("lora_dropout", "float", false, NUMBER, "a number from 0 to 1");
        field("fan_in_fan_out", "bool", true, BOOL, flag);
        field("bias", "Literal[\"none\", \"all\", \"lora_only\"]", false, STR, "\"none\", \"all\" or \"lora_only\"");
        field("use_rslora", "bool", true, BOOL, flag);
        field("modules_to_save", "Optional[list[str]]", true, listOf(STR), "a list of module names, or null");
        field("init_lora_weights", "bool | Literal[\"gaussian\", \"eva\", \"olora\", \"pissa\", \"pissa_niter_[n]\", \"corda\", \"loftq\", \"orthogonal\", ...]",
                true, BOOL.or(STR), "true, false or the name of an initialisation");
        field("layers_to_transform", "Optional[Union[list[int], int]]", true, INT.or(listOf(INT)), "a layer index or a list of them, or null");
        field("layers_pattern", "Optional[Union[list[str], str]]", true, STR.or(listOf(STR)), "a pattern or a list of them, or null");
        field("rank_pattern", "Optional[dict]", true, dictOf(INT), "an object from pattern to rank (an integer)");
        field("alpha_pattern", "Optional[dict]", true, dictOf(NUMBER), "an object from pattern to alpha (a number)");
        field("megatron_config", "Optional[dict]", true, DICT, "an object or null");
        field("megatron_core", "Optional[str]", true, STR, "a module name or null");
        field("trainable_token_indices", "Optional[Union[list[int], dict[str, list[int]]]]", true, listOf(INT).or(dictOf(listOf(INT))),
                "a list of token ids, an object from module name to such a list, or null");
        field("loftq_config", "Union[LoftQConfig, dict]", true, DICT, "an object");
        for (String config : new String[] {"eva_config", "corda_config", "lora_ga_config", "velora_config", "monteclora_config", "arrow_config",
                "kasa_config", "use_bdlora"}) {
            field(config, "Optional[...Config]", true, DICT, "an object or null");
        }
        field("use_dora", "bool", true, BOOL, flag);
        field("alora_invocation_tokens", "Optional[list[int]]", true, listOf(INT), "a list of token ids, or null");
        field("use_qalora", "bool", true, BOOL, flag);
        field("qalora_group_size", "int", true, INT, "an integer");
        field("layer_replication", "Optional[list[tuple[int, int]]]", true, listOf(n -> n.isArray() && n.size() == 2 && INT.test(n.get(0)) && INT.test(n.get(1))),
                "a list of [start, end] layer pairs, or null");
        field("runtime_config", "LoraRuntimeConfig", true, DICT, "an object");
        field("lora_bias", "bool", true, BOOL, flag);
        field("target_parameters", "Optional[list[str]]", true, listOf(STR), "a list of parameter names, or null");
        field("ensure_weight_tying", "bool", true, BOOL, flag);
    }

    private LoraConfigFields() {
    }

    /** Refuses the first field whose value PEFT's LoraConfig does not declare, naming it and the type PEFT expects. */
    static void check(Path file, JsonNode root) throws AdapterException {
        for (Map.Entry<String, JsonNode> e : root.properties()) {
            Field f = FIELDS.get(e.getKey());
            JsonNode v = e.getValue();
            if (f == null || (v.isNull() ? f.nullable() : f.accepts().test(v))) {
                continue;
            }
            throw new AdapterException(INVALID_CONFIG, file, "field \"" + e.getKey() + "\" is " + describe(v) + ", but PEFT's LoraConfig declares it "
                    + f.peftType() + ": " + f.words() + ". Fix the field (PEFT's save_pretrained writes it that way), or re-save the adapter with PEFT");
        }
    }

    /** A JSON value for a message: short, with its kind. */
    static String describe(JsonNode v) {
        String kind = v.isNull() ? "null" : v.isBoolean() ? "a boolean" : v.isNumber() ? "a number" : v.isTextual() ? "a string"
                : v.isArray() ? "a list" : "an object";
        if (v.isNull()) {
            return kind;
        }
        String text = v.toString();
        return (text.length() > 60 ? text.substring(0, 57) + "..." : text) + " (" + kind + ")";
    }
}
