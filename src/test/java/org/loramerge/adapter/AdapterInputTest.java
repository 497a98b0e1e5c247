package org.loramerge.adapter;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.loramerge.testutil.TinyModels.PEFT_PREFIX;
import static org.loramerge.testutil.TinyModels.f32Tensor;
import static org.loramerge.testutil.TinyModels.k;
import static org.loramerge.testutil.TinyModels.loraConfig;
import static org.loramerge.testutil.TinyModels.loraPair;
import static org.loramerge.testutil.TinyModels.q;
import static org.loramerge.testutil.TinyModels.qProjAdapter;
import static org.loramerge.testutil.TinyModels.writeAdapter;
import static org.loramerge.testutil.TinyModels.writeSafetensors;
import static org.loramerge.testutil.TinyModels.writeText;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import java.util.stream.Collectors;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.loramerge.adapter.AdapterException.Reason;
import org.loramerge.format.Checkpoint;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.PlanOptions;
import org.loramerge.plan.Planner;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TinyModels.Tensor;
import org.loramerge.testutil.TinyModels;

/**
 * Adapters that cannot be merged as they are, each stopped with a reason and a message naming the
 * offending key, and the config semantics PEFT gives r, alpha and targeting (peft 0.21
 * utils/other.py get_pattern_key, tuners_utils.py check_target_module_exists).
 */
class AdapterInputTest {
    private static final String Q_LIST = "[\"q_proj\"]";

    @TempDir
    Path dir;

    private Path base;

    @BeforeEach
    void writeBase() {
        base = TinyModels.writeTinyLlama(dir.resolve("base"));
    }

    private Path adapter(String config, List<Tensor> tensors) {
        return writeAdapter(dir.resolve("adapter"), config, tensors);
    }

    private MergePlan plan(Path adapterDir) throws Exception {
        try (Checkpoint c = Checkpoint.open(base); LoraAdapter a = LoraAdapter.open(adapterDir)) {
            return Planner.plan(c, a, PlanOptions.defaults());
        }
    }

    /** Opening or planning the adapter fails with {@code reason}; returns the exception. */
    private AdapterException refused(Path adapterDir, Reason reason) {
        AdapterException e = assertThrows(AdapterException.class, () -> plan(adapterDir));
        assertEquals(reason, e.reason(), e::getMessage);
        return e;
    }

    private static void assertNames(String what, AdapterException e) {
        assertTrue(e.getMessage().contains(what), () -> "message does not name " + what + ": " + e.getMessage());
    }

    private static List<Tensor> with(List<Tensor> a, Tensor... more) {
        List<Tensor> out = new ArrayList<>(a);
        out.addAll(List.of(more));
        return out;
    }

    private static List<Tensor> without(List<Tensor> a, String name) {
        List<Tensor> out = new ArrayList<>(a);
        assertTrue(out.removeIf(t -> t.name().equals(name)), name);
        return out;
    }

    private static String loraA(String module) {
        return PEFT_PREFIX + module + ".lora_A.weight";
    }

    private static String loraB(String module) {
        return PEFT_PREFIX + module + ".lora_B.weight";
    }

    private static String magnitude(String module) {
        return PEFT_PREFIX + module + ".lora_magnitude_vector";
    }

    // ------------------------------------------------------------------ baseline

    @Test
    void wellFormedAdapterPlansOneTermPerTargetedModule() throws Exception {
        MergePlan plan = plan(adapter(loraConfig(4, 8, Q_LIST, ""), qProjAdapter(4)));
        Map<String, OutputTensor> out = plan.tensors().stream().collect(Collectors.toMap(OutputTensor::name, Function.identity()));
        for (int layer = 0; layer < 2; layer++) {
            OutputTensor t = out.get(q(layer) + ".weight");
            assertEquals(OutputTensor.Kind.MERGE, t.kind());
            assertEquals(1, t.terms().size());
            assertEquals(4, t.terms().get(0).rank());
            assertEquals(2.0, t.terms().get(0).scale());
            assertEquals(OutputTensor.Kind.COPY, out.get(k(layer) + ".weight").kind());
        }
        assertEquals(4, plan.keyUse().size());
    }

    // ------------------------------------------------------------------ files and config

    @Test
    void pickleWeightsAreRefusedWithoutBeingRead() {
        Path a = dir.resolve("pickled");
        writeText(a.resolve("adapter_config.json"), loraConfig(4, 8, Q_LIST, ""));
        // a pickle protocol 2 header; loramerge must refuse by name, never parse it
        TinyModels.writeBytes(a.resolve("adapter_model.bin"), new byte[] {(byte) 0x80, 2, '}', 'q', 0, '.'});
        AdapterException e = refused(a, Reason.PICKLE);
        assertNames("adapter_model.bin", e);
        assertNames("safe_serialization=True", e);
    }

    @Test
    void missingAdapterConfigIsInvalidConfig() {
        Path a = dir.resolve("no-config");
        writeSafetensors(a.resolve("adapter_model.safetensors"), qProjAdapter(4));
        AdapterException e = refused(a, Reason.INVALID_CONFIG);
        assertNames("adapter_config.json", e);
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"{\"r\": 4, \"lora_alpha\": ", "r = 4", "[{\"r\": 4}]", "{\"r\": 4, \"target_modules\": [\"q_proj\"]} {\"r\": 8}"})
    void adapterConfigThatIsNotAJsonObjectIsInvalidConfig(String text) {
        Path a = adapter(text, qProjAdapter(4));
        AdapterException e = refused(a, Reason.INVALID_CONFIG);
        assertNames("adapter_config.json", e);
    }

    @ParameterizedTest
    @ValueSource(strings = {"LOHA", "PREFIX_TUNING", "lora"})
    void peftTypeOtherThanLoraIsUnsupported(String peftType) {
        String config = loraConfig(4, 8, Q_LIST, "").replace("\"peft_type\": \"LORA\"", "\"peft_type\": \"" + peftType + "\"");
        AdapterException e = refused(adapter(config, qProjAdapter(4)), Reason.UNSUPPORTED);
        assertNames("peft_type is " + peftType, e);
    }

    @ParameterizedTest
    @ValueSource(strings = {"\"layer_replication\": [[0, 2], [1, 2]]", "\"alora_invocation_tokens\": [32, 45]",
            "\"arrow_config\": {\"top_k\": 3}"})
    void mergeBlockingFeaturesAreUnsupported(String field) {
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, field), qProjAdapter(4)), Reason.UNSUPPORTED);
        assertNames(field.substring(1, field.indexOf('"', 1)), e);
    }

    @Test
    void mergeBlockingFieldsLeftEmptyDoNotBlock() throws Exception {
        String extra = "\"layer_replication\": null, \"alora_invocation_tokens\": [], \"arrow_config\": null, \"target_parameters\": []";
        MergePlan plan = plan(adapter(loraConfig(4, 8, Q_LIST, extra), qProjAdapter(4)));
        assertEquals(2, plan.count(OutputTensor.Kind.MERGE));
    }

    @ParameterizedTest
    @ValueSource(strings = {"use_dora", "lora_bias", "fan_in_fan_out"})
    void targetParametersWithAFlagParamWrapperRefusesIsAnInvalidConfig(String flag) {
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, "\"target_parameters\": [\"mlp.experts.gate_up_proj\"], \"" + flag
                + "\": true"), qProjAdapter(4)), Reason.INVALID_CONFIG);
        assertNames("target_parameters", e);
        assertNames(flag, e);
    }

    @Test
    void targetParametersMatchAParametersFullNameOrADotBoundarySuffixAsPeftDoes() throws Exception {
        AdapterConfig c;
        try (LoraAdapter a = LoraAdapter.open(adapter(loraConfig(4, 8, Q_LIST, "\"target_parameters\": [\"mlp.experts.gate_up_proj\", "
                + "\"model.layers.1.mlp.experts.down_proj\"]"), qProjAdapter(4)))) {
            c = a.config();
        }
        assertTrue(c.targetsParameter("model.layers.0.mlp.experts.gate_up_proj"));
        assertTrue(c.targetsParameter("model.layers.1.mlp.experts.down_proj"));
        assertFalse(c.targetsParameter("model.layers.0.mlp.experts.down_proj"), "a full name matches that layer only");
        assertFalse(c.targetsParameter("model.layers.0.mlp.shared_experts.gate_up_proj"), "a suffix matches on a dot boundary only");
    }

    /** A minimal config with {@code field} set to {@code valueJson} (replacing the default where there is one). */
    private static String configWith(String field, String valueJson) {
        Map<String, String> fields = new LinkedHashMap<>();
        fields.put("peft_type", "\"LORA\"");
        fields.put("r", "4");
        fields.put("lora_alpha", "8");
        fields.put("target_modules", Q_LIST);
        fields.put(field, valueJson);
        return fields.entrySet().stream().map(e -> "\"" + e.getKey() + "\": " + e.getValue()).collect(Collectors.joining(", ", "{", "}"));
    }

    @ParameterizedTest(name = "{0}: {1}")
    @CsvSource(delimiter = '|', value = {
            "target_modules          | 123                     | Optional[Union[list[str], str]]",
            "target_modules          | {}                      | Optional[Union[list[str], str]]",
            "target_modules          | [\"q_proj\", 7]         | Optional[Union[list[str], str]]",
            "exclude_modules         | 5                       | Optional[Union[list[str], str]]",
            "rank_pattern            | \"x\"                   | Optional[dict]",
            "rank_pattern            | {\"q_proj\": 2.5}       | Optional[dict]",
            "alpha_pattern           | [[\"q_proj\", 2]]       | Optional[dict]",
            "r                       | null                    | int",
            "r                       | 4.0                     | int",
            "r                       | \"4\"                   | int",
            "lora_alpha              | null                    | int",
            "lora_alpha              | true                    | int",
            "lora_dropout            | \"x\"                   | float",
            "lora_dropout            | null                    | float",
            "bias                    | null                    | Literal",
            "use_dora                | \"yes\"                 | bool",
            "use_rslora              | 1                       | bool",
            "modules_to_save         | \"lm_head\"             | Optional[list[str]]",
            "layers_to_transform     | \"0\"                   | Optional[Union[list[int], int]]",
            "layers_pattern          | 3                       | Optional[Union[list[str], str]]",
            "trainable_token_indices | {\"embed_tokens\": 5}   | Optional[Union[list[int], dict[str, list[int]]]]",
            "target_parameters       | \"experts\"             | Optional[list[str]]",
            "peft_type               | 7                       | str",
            "init_lora_weights       | 1                       | bool",
    })
    void wronglyTypedFieldIsRefusedNamingTheFieldAndTheTypePeftExpects(String field, String valueJson, String peftType) {
        AdapterException e = refused(adapter(configWith(field, valueJson), qProjAdapter(4)), Reason.INVALID_CONFIG);
        assertNames("adapter_config.json", e);
        assertNames("\"" + field + "\"", e);
        assertNames(peftType, e);
    }

    @ParameterizedTest(name = "{0}: {1}")
    @CsvSource(delimiter = '|', value = {
            "lora_dropout | 1.5           | from 0 to 1",
            "bias         | \"some\"     | lora_only",
            "rank_pattern | {\"q_proj\": 0} | positive",
    })
    void fieldOfTheRightTypeButAValuePeftRefusesIsRefused(String field, String valueJson, String why) {
        AdapterException e = refused(adapter(configWith(field, valueJson), qProjAdapter(4)), Reason.INVALID_CONFIG);
        assertNames(field, e);
        assertNames(why, e);
    }

    @Test
    void nullInAnOptionalFieldAndFieldsPeftDoesNotKnowAreHarmless() throws Exception {
        String extra = "\"exclude_modules\": null, \"rank_pattern\": null, \"use_dora\": null, \"modules_to_save\": null, "
                + "\"a_field_of_a_later_peft\": {\"x\": [1, \"y\"]}, \"megatron_core\": \"megatron.core\", \"loftq_config\": {}";
        MergePlan plan = plan(adapter(loraConfig(4, 8, Q_LIST, extra), qProjAdapter(4)));
        assertEquals(2, plan.count(OutputTensor.Kind.MERGE));
    }

    @ParameterizedTest
    @ValueSource(strings = {"\"use_qalora\": true", "\"use_bdlora\": {\"nblocks\": 2}", "\"kasa_config\": {}"})
    void loraVariantsWhoseMergeIsNotSBATimesAAreUnsupportedWithTheReason(String field) {
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, field), qProjAdapter(4)), Reason.UNSUPPORTED);
        assertNames(field.substring(1, field.indexOf('"', 1)), e);
        assertTrue(e.getMessage().contains("PEFT"), e::getMessage);
    }

    @Test
    void useQaloraFalseIsPlainLora() throws Exception {
        MergePlan plan = plan(adapter(loraConfig(4, 8, Q_LIST, "\"use_qalora\": false, \"qalora_group_size\": 16"), qProjAdapter(4)));
        assertEquals(2, plan.count(OutputTensor.Kind.MERGE));
    }

    // ------------------------------------------------------------------ keys

    @ParameterizedTest
    @ValueSource(strings = {PEFT_PREFIX + "model.layers.0.self_attn.q_proj.lora_A.default.weight",
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            PEFT_PREFIX + "model.layers.0.self_attn.q_proj.modules_to_save.default.weight"})
    void keyOfAFormPeftDoesNotSaveIsUnknownKey(String key) {
        List<Tensor> tensors = with(qProjAdapter(4), f32Tensor(key, 4, 8));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.UNKNOWN_KEY);
        assertNames(key, e);
    }

    @Test
    void loraAWithoutLoraBIsMissingPartner() {
        List<Tensor> tensors = without(qProjAdapter(4), loraB(q(1)));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.MISSING_PARTNER);
        assertNames(loraA(q(1)), e);
        assertNames(loraB(q(1)), e);
    }

    @Test
    void loraBWithoutLoraAIsMissingPartner() {
        List<Tensor> tensors = without(qProjAdapter(4), loraA(q(0)));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.MISSING_PARTNER);
        assertNames(loraB(q(0)), e);
    }

    @Test
    void keyForAModuleTheBaseLacksIsNoSuchBaseTensor() {
        String vProj = "model.layers.0.self_attn.v_proj";
        List<Tensor> tensors = with(qProjAdapter(4), loraPair(vProj, 4, 8, 8).toArray(new Tensor[0]));
        AdapterException e = refused(adapter(loraConfig(4, 8, "[\"q_proj\", \"v_proj\"]", ""), tensors), Reason.NO_SUCH_BASE_TENSOR);
        assertNames(loraA(vProj), e);
        assertNames(vProj + ".weight", e);
    }

    @Test
    void replacementOfATensorTheBaseLacksIsNoSuchBaseTensor() {
        String key = PEFT_PREFIX + "model.layers.0.mlp.gate_proj.base_layer.weight";
        List<Tensor> tensors = with(qProjAdapter(4), f32Tensor(key, 8, 8));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.NO_SUCH_BASE_TENSOR);
        assertNames(key, e);
    }

    @Test
    void loraAWhoseInputDimDoesNotFitTheBaseIsShapeMismatch() {
        List<Tensor> tensors = without(qProjAdapter(4), loraA(q(0)));
        tensors.add(f32Tensor(loraA(q(0)), 4, 16)); // the base q_proj takes 8 inputs
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.SHAPE_MISMATCH);
        assertNames(q(0), e);
        assertNames("[4, 16]", e);
    }

    @Test
    void loraBWhoseOutputDimDoesNotFitTheBaseIsShapeMismatch() {
        List<Tensor> tensors = without(qProjAdapter(4), loraB(q(1)));
        tensors.add(f32Tensor(loraB(q(1)), 12, 4));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.SHAPE_MISMATCH);
        assertNames(q(1), e);
    }

    @Test
    void configRankThatDiffersFromTheFactorsIsRefused() {
        AdapterException e = refused(adapter(loraConfig(8, 16, Q_LIST, ""), qProjAdapter(4)), Reason.CONFIG_MISMATCH);
        assertNames(q(0), e);
        assertNames("rank 8", e);
    }

    @Test
    void rankPatternMakesTheConfigAgreeWithTheFactors() throws Exception {
        MergePlan plan = plan(adapter(loraConfig(8, 16, Q_LIST, "\"rank_pattern\": {\"q_proj\": 4}"), qProjAdapter(4)));
        TermSpec t = term(plan, q(0));
        assertEquals(4, t.rank());
        assertEquals(16.0 / 4, t.scale());
    }

    @Test
    void keysForAModuleTheConfigDoesNotTargetAreRefused() {
        List<Tensor> tensors = with(qProjAdapter(4), loraPair(k(1), 4, 8, 8).toArray(new Tensor[0]));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.CONFIG_MISMATCH);
        assertNames(k(1), e);
    }

    @Test
    void keysOutsideLayersToTransformAreRefused() {
        String config = loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [0], \"layers_pattern\": \"layers\"");
        AdapterException e = refused(adapter(config, qProjAdapter(4)), Reason.CONFIG_MISMATCH);
        assertNames(q(1), e);
    }

    // ------------------------------------------------------------------ DoRA

    @Test
    void doraMagnitudeWithoutUseDoraIsRefused() {
        List<Tensor> tensors = with(qProjAdapter(4), f32Tensor(magnitude(q(0)), 8));
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, ""), tensors), Reason.CONFIG_MISMATCH);
        assertNames(magnitude(q(0)), e);
        assertNames("use_dora", e);
    }

    @Test
    void useDoraWithoutMagnitudeIsRefused() {
        List<Tensor> tensors = with(qProjAdapter(4), f32Tensor(magnitude(q(0)), 8)); // layer 1 has none
        AdapterException e = refused(adapter(loraConfig(4, 8, Q_LIST, "\"use_dora\": true"), tensors), Reason.CONFIG_MISMATCH);
        assertNames(q(1), e);
        assertNames("lora_magnitude_vector", e);
    }

    @Test
    void doraWithMagnitudesForEveryModulePlansARowRescaling() throws Exception {
        List<Tensor> tensors = with(qProjAdapter(4), f32Tensor(magnitude(q(0)), 8), f32Tensor(magnitude(q(1)), 8));
        MergePlan plan = plan(adapter(loraConfig(4, 8, Q_LIST, "\"use_dora\": true"), tensors));
        OutputTensor t = output(plan, q(1) + ".weight");
        assertNotNull(t.dora());
        assertEquals(org.loramerge.plan.DoraSpec.Axis.ROW, t.dora().axis());
    }

    // ------------------------------------------------------------------ config semantics

    private AdapterConfig config(String json) throws Exception {
        Path file = writeText(dir.resolve("cfg").resolve("adapter_config.json"), json);
        return AdapterConfig.read(file);
    }

    @Test
    void rankPatternKeyMatchesEveryModuleEndingInIt() throws Exception {
        AdapterConfig c = config(loraConfig(8, 16, "[\"q_proj\", \"k_proj\"]", "\"rank_pattern\": {\"k_proj\": 2}"));
        assertEquals(2, c.rankFor(k(0)));
        assertEquals(2, c.rankFor(k(1)));
        assertEquals(8, c.rankFor(q(0)));
        assertEquals(16.0 / 2, c.scaleFor(k(1)));
        assertEquals(16.0 / 8, c.scaleFor(q(1)));
    }

    @Test
    void rankPatternAnchoredKeyMatchesOneModule() throws Exception {
        AdapterConfig c = config(loraConfig(8, 16, Q_LIST, "\"rank_pattern\": {\"^model.layers.0.self_attn.q_proj\": 3}"));
        assertEquals(3, c.rankFor(q(0)));
        assertEquals(8, c.rankFor(q(1)));
    }

    @Test
    void rankPatternKeyMatchesOnlyOnADotBoundary() throws Exception {
        AdapterConfig c = config(loraConfig(8, 16, Q_LIST, "\"rank_pattern\": {\"proj\": 2, \"attn.q_proj\": 6, \"self_attn.q_proj\": 5}"));
        // peft: re.match(r"(.*\.)?(proj)$", name) fails, and "attn.q_proj" follows "self_", not a dot
        assertEquals(5, c.rankFor(q(0)), "only \"self_attn.q_proj\" ends ...self_attn.q_proj on a dot boundary");
        assertEquals(8, c.rankFor(k(0)));
    }

    @Test
    void rankPatternFirstMatchInJsonOrderWins() throws Exception {
        AdapterConfig broadFirst = config(loraConfig(8, 16, Q_LIST,
                "\"rank_pattern\": {\"q_proj\": 5, \"^model.layers.0.self_attn.q_proj\": 3}"));
        assertEquals(5, broadFirst.rankFor(q(0)));
        assertEquals(5, broadFirst.rankFor(q(1)));
        AdapterConfig narrowFirst = config(loraConfig(8, 16, Q_LIST,
                "\"rank_pattern\": {\"^model.layers.0.self_attn.q_proj\": 3, \"q_proj\": 5}"));
        assertEquals(3, narrowFirst.rankFor(q(0)));
        assertEquals(5, narrowFirst.rankFor(q(1)));
    }

    @Test
    void alphaPatternFollowsTheSameRules() throws Exception {
        AdapterConfig c = config(loraConfig(4, 8, Q_LIST,
                "\"alpha_pattern\": {\"^model.layers.1.self_attn.q_proj\": 32, \"q_proj\": 2}"));
        assertEquals(32.0, c.alphaFor(q(1)));
        assertEquals(2.0, c.alphaFor(q(0)));
        assertEquals(8.0, c.alphaFor(k(0)));
        assertEquals(32.0 / 4, c.scaleFor(q(1)));
        assertEquals(2.0 / 4, c.scaleFor(q(0)));
    }

    @Test
    void scaleIsAlphaOverRAndAlphaOverSqrtRWithRsLora() throws Exception {
        AdapterConfig plain = config(loraConfig(8, 16, Q_LIST, ""));
        assertEquals(2.0, plain.scaleFor(q(0)));
        AdapterConfig rs = config(loraConfig(8, 16, Q_LIST, "\"use_rslora\": true"));
        assertEquals(16 / Math.sqrt(8), rs.scaleFor(q(0)));
        AdapterConfig rsPattern = config(loraConfig(8, 16, Q_LIST, "\"use_rslora\": true, \"rank_pattern\": {\"k_proj\": 4}"));
        assertEquals(8.0, rsPattern.scaleFor(k(0)));
    }

    @Test
    void rsLoraScaleReachesThePlan() throws Exception {
        MergePlan plan = plan(adapter(loraConfig(4, 6, Q_LIST, "\"use_rslora\": true"), qProjAdapter(4)));
        assertEquals(3.0, term(plan, q(1)).scale());
    }

    @Test
    void rankAndAlphaPatternsReachThePlan() throws Exception {
        List<Tensor> tensors = with(qProjAdapter(4), loraPair(k(0), 2, 8, 8).toArray(new Tensor[0]));
        String config = loraConfig(4, 8, "[\"q_proj\", \"k_proj\"]", "\"rank_pattern\": {\"k_proj\": 2}, \"alpha_pattern\": {\"k_proj\": 1}");
        MergePlan plan = plan(adapter(config, tensors));
        assertEquals(2, term(plan, k(0)).rank());
        assertEquals(0.5, term(plan, k(0)).scale());
        assertEquals(4, term(plan, q(0)).rank());
        assertEquals(2.0, term(plan, q(0)).scale());
    }

    @Test
    void targetModulesStringIsAFullMatchOnTheModuleName() throws Exception {
        AdapterConfig bare = config(loraConfig(4, 8, "\"q_proj\"", ""));
        assertFalse(bare.targets(q(0)), "a string target must match the whole name, not a suffix");
        AdapterConfig regex = config(loraConfig(4, 8, "\".*\\\\.q_proj\"", ""));
        assertTrue(regex.targets(q(0)));
        assertTrue(regex.targets(q(1)));
        assertFalse(regex.targets(k(0)));
        AdapterConfig layer0 = config(loraConfig(4, 8, "\"model\\\\.layers\\\\.0\\\\..*_proj\"", ""));
        assertTrue(layer0.targets(q(0)));
        assertTrue(layer0.targets(k(0)));
        assertFalse(layer0.targets(q(1)));
    }

    @Test
    void targetModulesListMatchesAWholeNameOrADotSuffix() throws Exception {
        AdapterConfig c = config(loraConfig(4, 8, "[\"q_proj\"]", ""));
        assertTrue(c.targets(q(0)));
        assertTrue(c.targets(q(1)));
        assertFalse(c.targets(k(0)));
        assertTrue(config(loraConfig(4, 8, "[\"self_attn.q_proj\"]", "")).targets(q(1)));
        assertFalse(config(loraConfig(4, 8, "[\"_proj\"]", "")).targets(q(0)), "\"_proj\" is no dot-boundary suffix");
        assertFalse(config(loraConfig(4, 8, "[\"proj\"]", "")).targets(q(0)));
        AdapterConfig exact = config(loraConfig(4, 8, "[\"" + k(1) + "\"]", ""));
        assertTrue(exact.targets(k(1)));
        assertFalse(exact.targets(k(0)));
    }

    @Test
    void excludeModulesWinsOverTargetModules() throws Exception {
        AdapterConfig list = config(loraConfig(4, 8, "\".*_proj\"", "\"exclude_modules\": [\"k_proj\"]"));
        assertTrue(list.targets(q(0)));
        assertFalse(list.targets(k(0)));
        assertFalse(list.targets(k(1)));
        AdapterConfig regex = config(loraConfig(4, 8, "[\"q_proj\", \"k_proj\"]", "\"exclude_modules\": \"model\\\\.layers\\\\.1\\\\..*\""));
        assertTrue(regex.targets(q(0)));
        assertTrue(regex.targets(k(0)));
        assertFalse(regex.targets(q(1)));
        assertFalse(regex.targets(k(1)));
        AdapterConfig partial = config(loraConfig(4, 8, "[\"q_proj\"]", "\"exclude_modules\": \"q_proj\""));
        assertTrue(partial.targets(q(0)), "a string exclude_modules is a full match too");
    }

    @Test
    void layersToTransformWithLayersPatternFiltersByLayerIndex() throws Exception {
        AdapterConfig list = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [0], \"layers_pattern\": \"layers\""));
        assertTrue(list.targets(q(0)));
        assertFalse(list.targets(q(1)));
        AdapterConfig single = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": 1, \"layers_pattern\": [\"h\", \"layers\"]"));
        assertFalse(single.targets(q(0)));
        assertTrue(single.targets(q(1)));
        AdapterConfig noPattern = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [1]"));
        assertFalse(noPattern.targets(q(0)));
        assertTrue(noPattern.targets(q(1)));
        AdapterConfig otherPattern = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [0, 1], \"layers_pattern\": \"blocks\""));
        assertFalse(otherPattern.targets(q(0)), "no 'blocks.N.' in the name: PEFT finds no layer index and skips the module");
    }

    @Test
    void aFullNameInTargetModulesIsTakenWhateverTheLayerFilterAndAnEmptyFilterKeepsAll() throws Exception {
        // peft 0.21 check_target_module_exists: a name "specified directly in target_modules" returns before the layer filter
        AdapterConfig full = config(loraConfig(4, 8, "[\"" + q(0) + "\", \"v_proj\"]", "\"layers_to_transform\": [1]"));
        assertTrue(full.targets(q(0)), "named in full");
        assertFalse(full.targets("model.layers.0.self_attn.v_proj"), "a suffix entry in layer 0");
        assertTrue(full.targets("model.layers.1.self_attn.v_proj"));
        // is_using_layer_indexes is false for an empty list
        AdapterConfig empty = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": []"));
        assertTrue(empty.targets(q(0)));
        assertTrue(empty.targets(q(1)));
    }

    @Test
    void layerFieldsPeftRefusesAreRefusedAsPeftRefusesThem() throws Exception {
        // peft 0.21 LoraConfig.__post_init__ raises on each, so PEFT neither saves nor loads such a config
        String[][] cases = {
            {"\".*q_proj\"", "\"layers_to_transform\": [0]", "layers_to_transform is set, but target_modules is a string"},
            {"\".*q_proj\"", "\"layers_to_transform\": []", "layers_to_transform is set, but target_modules is a string"},
            {"\"all-linear\"", "\"layers_pattern\": \"layers\"", "layers_pattern is set, but target_modules is a string"},
            {Q_LIST, "\"layers_pattern\": \"layers\"", "layers_pattern is set without layers_to_transform"},
        };
        for (String[] c : cases) {
            Path file = writeText(dir.resolve("cfg").resolve("adapter_config.json"), loraConfig(4, 8, c[0], c[1]));
            AdapterException e = assertThrows(AdapterException.class, () -> AdapterConfig.read(file), c[1]);
            assertEquals(Reason.INVALID_CONFIG, e.reason());
            assertTrue(e.getMessage().contains(c[2]), e::getMessage);
        }
        // an empty layers_pattern is no pattern (Python's falsy), and null is unset
        config(loraConfig(4, 8, Q_LIST, "\"layers_pattern\": \"\""));
        config(loraConfig(4, 8, "\".*q_proj\"", "\"layers_to_transform\": null, \"layers_pattern\": null"));
    }

    @Test
    void trainableTokenKeysMatchAnyEndingOfTheModuleNameAndTheLastMatchWins() throws Exception {
        // peft utils/other.py _set_trainable: key.endswith(target_key), each key of the object in turn
        AdapterConfig c = config(loraConfig(4, 8, Q_LIST, "\"trainable_token_indices\": {\"tokens\": [1, 2], \"embed_tokens\": [3]}"));
        assertEquals(List.of(3L), c.tokenIndicesFor("model.embed_tokens", true), "both keys match; the later one wins");
        AdapterConfig suffix = config(loraConfig(4, 8, Q_LIST, "\"trainable_token_indices\": {\"tokens\": [1, 2]}"));
        assertEquals(List.of(1L, 2L), suffix.tokenIndicesFor("model.embed_tokens", true), "no dot boundary");
        assertEquals(null, suffix.tokenIndicesFor("lm_head", false));
    }

    @Test
    void layersToTransformPastAnIntIsComparedWholeNotCutTo32Bits() throws Exception {
        // 2^32 cut to an int is 0: layer 0 was adapted, where PEFT compares Python ints and adapts no layer
        AdapterConfig wide = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [4294967296]"));
        assertFalse(wide.targets(q(0)));
        assertFalse(wide.targets(q(1)));
        AdapterConfig single = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": 4294967297"));
        assertFalse(single.targets(q(1)));
        AdapterConfig huge = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [123456789012345678901234567890]"));
        assertTrue(huge.targets("model.layers.123456789012345678901234567890.self_attn.q_proj"), "Python's int has no size limit");
    }

    @Test
    void tokenIdPastALongIsRefusedNotCutToItsLow64Bits() throws Exception {
        // 2^64's low 64 bits are 0: row 0 would have been replaced
        Path file = writeText(dir.resolve("cfg").resolve("adapter_config.json"),
                loraConfig(4, 8, Q_LIST, "\"trainable_token_indices\": [18446744073709551616]"));
        AdapterException e = assertThrows(AdapterException.class, () -> AdapterConfig.read(file));
        assertEquals(Reason.INVALID_CONFIG, e.reason());
        assertTrue(e.getMessage().contains(file.toString()) && e.getMessage().contains("18446744073709551616"), e::getMessage);
    }

    @Test
    void layerIndexIsTheFirstNumberedSegmentAsInPeft021() throws Exception {
        // peft 0.21 tuners_utils.py: r".*?\.[^.]*\.(?P<idx>\d+)\." (lazy) picks the layer, not the expert index
        String expert = "model.layers.1.mlp.experts.0.down_proj";
        AdapterConfig c = config(loraConfig(4, 8, "[\"down_proj\"]", "\"layers_to_transform\": [1]"));
        assertTrue(c.targets(expert), "layer 1's expert 0 is in layer 1");
        AdapterConfig zero = config(loraConfig(4, 8, "[\"down_proj\"]", "\"layers_to_transform\": [0]"));
        assertFalse(zero.targets(expert), "layer 1's expert 0 is not in layer 0");
    }

    @Test
    void layersPatternMayStartTheModuleName() throws Exception {
        // peft 0.21: rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\." matches a bare LlamaModel's "layers.0.self_attn.q_proj"
        AdapterConfig c = config(loraConfig(4, 8, Q_LIST, "\"layers_to_transform\": [0], \"layers_pattern\": \"layers\""));
        assertTrue(c.targets("layers.0.self_attn.q_proj"));
        assertFalse(c.targets("layers.1.self_attn.q_proj"));
    }

    @Test
    void moduleThatNoRankPatternKeyMatchesKeepsR() throws Exception {
        AdapterConfig c = config(loraConfig(8, 16, Q_LIST, "\"rank_pattern\": {\"v_proj\": 2, \"^model.layers.1.self_attn.q_proj\": 3}"));
        assertEquals(8, c.rankFor(q(0)));
        assertEquals(3, c.rankFor(q(1)));
    }

    // ------------------------------------------------------------------ helpers over plans

    private static OutputTensor output(MergePlan plan, String name) {
        return plan.tensors().stream().filter(t -> t.name().equals(name)).findFirst()
                .orElseThrow(() -> new AssertionError("no output tensor " + name));
    }

    private static TermSpec term(MergePlan plan, String module) {
        OutputTensor t = output(plan, module + ".weight");
        assertEquals(1, t.terms().size(), () -> module + " terms: " + t.terms());
        return t.terms().get(0);
    }

    @Test
    void adapterFolderWithoutWeightsNamesWhatIsMissing() throws Exception {
        Path a = dir.resolve("empty-adapter");
        Files.createDirectories(a);
        writeText(a.resolve("adapter_config.json"), loraConfig(4, 8, Q_LIST, ""));
        java.io.IOException e = assertThrows(java.io.IOException.class, () -> plan(a));
        assertTrue(e.getMessage().contains("adapter_model.safetensors"), e::getMessage);
    }
}
