package org.loramerge.plan;

import com.fasterxml.jackson.databind.node.ObjectNode;
import java.util.List;
import java.util.Map;

/**
 * The new adapter {@code combine} writes, decided before anything is written: one combined update
 * per module, the new rank (every module's factors are zero-padded to it, as PEFT pads them), and
 * the new adapter_config.json.
 *
 * @param modules  the modules, in the order their tensors are written
 * @param rank     the new r (= lora_alpha, so the scale is 1)
 * @param config   adapter_config.json to write
 * @param keyUse   every key of every input adapter and where it went
 * @param warnings things the user should know
 * @param notes    decisions worth reporting
 */
public record AdapterPlan(List<Module> modules, int rank, ObjectNode config, Map<String, String> keyUse, List<String> warnings,
                          List<String> notes) {
    /** The prefix of every key PEFT saves. */
    public static final String PREFIX = "base_model.model.";

    public AdapterPlan {
        modules = List.copyOf(modules);
    }

    /**
     * One module of the new adapter.
     *
     * @param module      the module's name in the base (model.layers.0.self_attn.q_proj)
     * @param update      the adapters' updates and how they combine
     * @param weightShape the base weight's shape
     * @param aShape      the stored shape of the first adapter's A (lora_A or lora_embedding_A)
     * @param bShape      the stored shape of its B
     */
    public record Module(String module, CombinedUpdate update, long[] weightShape, long[] aShape, long[] bShape) {
        /** lora_embedding_A/B (no ".weight") for an embedding, lora_A/B.weight otherwise. */
        public String aKey() {
            return PREFIX + module + (isEmbedding() ? ".lora_embedding_A" : ".lora_A.weight");
        }

        public String bKey() {
            return PREFIX + module + (isEmbedding() ? ".lora_embedding_B" : ".lora_B.weight");
        }

        public boolean isEmbedding() {
            return update.layout() == Layout.EMBEDDING;
        }

        /** A's shape at rank {@code r}: [r, the rest of A's]. */
        public long[] aShapeAt(int r) {
            long[] s = aShape.clone();
            s[0] = r;
            return s;
        }

        /** B's shape at rank {@code r}: [out, r, the rest of B's]. */
        public long[] bShapeAt(int r) {
            long[] s = bShape.clone();
            s[1] = r;
            return s;
        }

        /** The rank the method gives this module before padding (0 for the SVD methods, whose rank is the plan's). */
        public int combinedRank(CombineMethod method) {
            if (method.operand() == CombineMethod.Operand.SVD) {
                return 0;
            }
            int r = 0;
            for (CombinedUpdate.Part p : update.parts()) {
                r = method == CombineMethod.CAT ? r + p.term().rank() : Math.max(r, p.term().rank());
            }
            return r;
        }
    }
}
