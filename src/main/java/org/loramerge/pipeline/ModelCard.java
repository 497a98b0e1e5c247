package org.loramerge.pipeline;

import java.nio.file.Path;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;
import org.loramerge.format.ToolVersion;
import org.loramerge.plan.MergePlan;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.Provenance;
import org.loramerge.verify.Verifier;

/**
 * The README.md a merged model gets instead of the base's, whose card describes another model:
 * Hugging Face's metadata block (base_model, the base's license, tags) and a short table of what
 * was merged, how, by which loramerge and with what verification. Folder names only, never local
 * paths (cards get published: a base_model_name_or_path that is a path is left out), and nothing of
 * the output's own name, so the same inputs and options give the same bytes wherever the output goes.
 */
final class ModelCard {
    private ModelCard() {
    }

    /**
     * @param verifiedRows rows per adapted tensor that {@code --verify} recomputed, 0 when it did not run
     * @param worstUlp     per verified tensor, its worst error in ulp
     */
    static String render(MergePlan plan, int verifiedRows, Map<String, Double> worstUlp) {
        Provenance p = plan.provenance();
        String hubId = hubId(p.baseModelName());
        StringBuilder sb = new StringBuilder("---\n");
        if (hubId != null) {
            sb.append("base_model: ").append(hubId).append('\n');
        }
        sb.append("library_name: transformers\n");
        for (String line : p.baseLicense()) {
            sb.append(line).append('\n');
        }
        sb.append("tags:\n- loramerge\n- lora\n- merge\n---\n\n");
        String base = hubId != null ? "`" + hubId + "`" : "the base model in `" + name(p.base()) + "`";
        sb.append("# ").append(hubId != null ? hubId : name(p.base())).append(" + ").append(name(p.adapter()));
        for (Path more : p.moreAdapters()) {
            sb.append(" + ").append(name(more));
        }
        sb.append(" (merged)\n\n");
        if (p.combination() == null) {
            sb.append("This model is ").append(base).append(" with the PEFT LoRA adapter of `").append(name(p.adapter()))
                    .append("` merged into its weights by loramerge ").append(ToolVersion.get()).append(".\n\n");
        } else {
            sb.append("This model is ").append(base).append(" with ").append(1 + p.moreAdapters().size())
                    .append(" PEFT LoRA adapters combined and merged into its weights by loramerge ").append(ToolVersion.get()).append(".\n\n");
        }
        sb.append("| | |\n| --- | --- |\n");
        sb.append("| base model | ").append(base).append(" (folder `").append(name(p.base())).append("`) |\n");
        if (p.combination() != null) {
            sb.append("| adapters | `").append(name(p.adapter())).append('`');
            for (Path more : p.moreAdapters()) {
                sb.append(", `").append(name(more)).append('`');
            }
            sb.append(", combined by ").append(p.combination()).append(" |\n");
        }
        sb.append(p.combination() == null ? "| adapter | `" : "| first adapter | `").append(name(p.adapter())).append("`: LoRA r=").append(p.rank()).append(", lora_alpha=")
                .append(number(p.alpha())).append(p.useRslora() ? ", rsLoRA" : "").append(p.useDora() ? ", DoRA" : "")
                .append(p.targetModules().isEmpty() ? "" : ", target_modules " + String.join(", ", p.targetModules())).append(" |\n");
        sb.append("| method | every adapted weight is ").append(p.combination() == null ? "W + s·B·A" : "W + the adapters' combined update").append(p.useDora() ? " with DoRA's magnitude rescaling" : "")
                .append(", computed exactly and rounded once (to nearest, ties to even) into ").append(dtypes(plan)).append(" |\n");
        sb.append("| tensors | ").append(plan.count(OutputTensor.Kind.MERGE)).append(" merged, ").append(plan.count(OutputTensor.Kind.REPLACE))
                .append(" replaced, ").append(plan.count(OutputTensor.Kind.CONVERT)).append(" converted, ")
                .append(plan.count(OutputTensor.Kind.DEQUANTIZE) > 0 ? plan.count(OutputTensor.Kind.DEQUANTIZE) + " dequantized, " : "")
                .append(plan.count(OutputTensor.Kind.COPY)).append(" copied |\n");
        sb.append("| verification | ").append(verification(verifiedRows, worstUlp)).append(" |\n");
        sb.append("| loramerge | ").append(ToolVersion.get()).append(" |\n\n");
        sb.append("The base model's license and terms apply to this model; its license files are carried over unchanged.\n");
        return sb.toString();
    }

    private static String verification(int verifiedRows, Map<String, Double> worstUlp) {
        if (verifiedRows <= 0) {
            return "not run at merge time; `loramerge verify --base BASE --adapter ADAPTER --merged MERGED` recomputes sampled rows exactly";
        }
        double worst = worstUlp.values().stream().mapToDouble(Double::doubleValue).max().orElse(0);
        String rows = verifiedRows == Verifier.ALL_ROWS ? "every row" : verifiedRows + " sampled rows each";
        return String.format(Locale.ROOT, "passed: %d adapted tensors, %s recomputed exactly, unchanged tensors compared completely, "
                + "worst error %s ulp (`merge --verify`)", worstUlp.size(), rows, number(worst));
    }

    private static String dtypes(MergePlan plan) {
        TreeSet<String> names = new TreeSet<>();
        for (OutputTensor t : plan.tensors()) {
            if (t.kind() != OutputTensor.Kind.COPY) {
                names.add(t.isRequantized() ? "NF4 (requantized with the base's settings)" : t.dtype().name());
            }
        }
        return names.isEmpty() ? "the base's dtypes" : String.join(", ", names);
    }

    private static String number(double v) {
        return v == Math.rint(v) && Math.abs(v) < 1e15 ? Long.toString((long) v) : Double.toString(v);
    }

    private static String name(Path p) {
        Path n = p.toAbsolutePath().normalize().getFileName();
        return n == null ? p.toString() : n.toString();
    }

    /**
     * base_model_name_or_path when it has the form of a Hugging Face model id ({@code name} or
     * {@code namespace/name}: letters, digits, '-', '_' and '.', neither starting nor ending with '-' or
     * '.', no "--" or "..", at most 96 characters), else null: the Trainer, TRL and others record the
     * path a base was loaded from, which is no model id and which the Hub refuses as base_model.
     */
    static String hubId(String nameOrPath) {
        if (nameOrPath == null) {
            return null;
        }
        String s = nameOrPath.trim();
        String part = "[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?";
        if (s.length() > 96 || !s.matches("(?:" + part + "/)?" + part) || s.contains("--") || s.contains("..")) {
            return null;
        }
        return s;
    }
}
