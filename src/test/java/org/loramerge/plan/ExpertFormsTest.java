package org.loramerge.plan;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * loramerge's table of how MoE model types store their expert parameters
 * ({@link ExpertParameters}) against what transformers 5.18 itself does, recorded in
 * src/test/resources/moe/forms.json by scripts/fixtures/make_moe_fixtures.py: for each model type,
 * which checkpoint tensor holds which rows of which expert of each in-memory parameter, the
 * layout (is_transposed), the order the experts module registers its parameters in, and where
 * the block's other parameters (the router) are stored.
 */
class ExpertFormsTest {
    private static final JsonNode FORMS = read();

    private static JsonNode read() {
        try {
            return new ObjectMapper().readTree(Paths.get("src/test/resources/moe/forms.json").toFile());
        } catch (java.io.IOException e) {
            throw new IllegalStateException(e);
        }
    }

    static Stream<String> modelTypes() {
        List<String> types = new ArrayList<>();
        FORMS.fieldNames().forEachRemaining(types::add);
        return types.stream();
    }

    @Test
    void theTableCoversExactlyTheModelTypesTransformersWasAskedAbout() {
        Set<String> recorded = new TreeSet<>();
        FORMS.fieldNames().forEachRemaining(recorded::add);
        assertEquals(recorded, new TreeSet<>(ExpertParameters.FAMILIES.keySet()));
    }

    /** The checkpoint of one model type's layer 0, as transformers saved it, seen through loramerge's table. */
    private static ExpertParameters layer0(String modelType) {
        JsonNode form = FORMS.get(modelType);
        Map<String, long[]> shapes = new LinkedHashMap<>();
        form.get("saved_layer0_shapes").fields().forEachRemaining(e -> {
            long[] s = new long[e.getValue().size()];
            for (int i = 0; i < s.length; i++) {
                s[i] = e.getValue().get(i).asLong();
            }
            shapes.put(e.getKey(), s);
        });
        ObjectNode config = new ObjectMapper().createObjectNode();
        config.put("model_type", modelType);
        config.put(form.get("config_experts_key").asText(), form.get("experts").asInt());
        return new ExpertParameters(modelType, config, shapes);
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("modelTypes")
    void everyExpertParameterMapsOntoTheTensorsTransformersSavedIt(String modelType) throws Exception {
        JsonNode form = FORMS.get(modelType);
        ExpertParameters table = layer0(modelType);
        String module = form.get("experts_module").asText();
        for (JsonNode p : form.get("parameters")) {
            String name = module + "." + p.get("name").asText();
            ExpertParameters.Stored stored = table.find(name);
            assertNotNull(stored, name);
            List<String> expected = new ArrayList<>();
            for (JsonNode s : p.get("stored")) {
                if (s.path("whole").asBoolean(false)) {
                    expected.add(s.get("tensor").asText() + " whole");
                } else {
                    assertEquals(false, s.get("transposed").asBoolean(), name + ": transformers stores no expert transposed here");
                    expected.add(s.get("tensor").asText() + " expert " + s.get("expert").asInt() + " rows " + s.get("rows").get(0).asLong() + ".."
                            + s.get("rows").get(1).asLong());
                }
            }
            List<String> got = new ArrayList<>();
            for (ExpertParameters.Piece piece : stored.pieces()) {
                got.add(piece.expert() < 0 ? piece.tensor() + " whole"
                        : piece.tensor() + " expert " + piece.expert() + " rows " + piece.firstRow() + ".." + (piece.firstRow() + piece.rows()));
            }
            assertEquals(expected, got, name);
            if (p.get("shape").size() == 3) {
                assertEquals(form.get("is_transposed").asBoolean(), stored.transposed(), name + " layout");
                assertEquals(p.get("shape").get(0).asInt(), stored.experts(), name + " experts");
                assertEquals(p.get("shape").get(1).asLong(), stored.d1(), name + " d1");
                assertEquals(p.get("shape").get(2).asLong(), stored.d2(), name + " d2");
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("modelTypes")
    void theExpertsParametersAreWrappedInTheOrderTheModuleRegistersThem(String modelType) throws Exception {
        List<String> registered = new ArrayList<>();
        FORMS.get(modelType).get("parameters").forEach(p -> registered.add(p.get("name").asText()));
        List<String> reversed = new ArrayList<>(registered);
        java.util.Collections.reverse(reversed);
        assertEquals(registered, ExpertParameters.wrapped(FORMS.get(modelType).get("experts_module").asText(), reversed));
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("modelTypes")
    void theBlocksOtherParametersAreFoundUnderTheirCheckpointNames(String modelType) throws Exception {
        ExpertParameters table = layer0(modelType);
        JsonNode others = FORMS.get(modelType).get("other_mlp_parameters");
        int checked = 0;
        for (var it = others.fields(); it.hasNext(); ) {
            var e = it.next();
            if (!e.getKey().endsWith(".weight") || e.getValue().isEmpty()) {
                continue;
            }
            ExpertParameters.Stored stored = table.find(e.getKey());
            assertNotNull(stored, e.getKey());
            assertEquals(e.getValue().get(0).asText(), stored.pieces().get(0).tensor(), e.getKey());
            checked++;
        }
        assertTrue(checked > 0, modelType + " has a router weight");
    }
}
