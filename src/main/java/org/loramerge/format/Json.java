package org.loramerge.format;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;

/**
 * JSON as Hugging Face tools write it. transformers writes config.json with
 * {@code json.dumps(config, indent=2, sort_keys=True) + "\n"} (configuration_utils.py
 * {@code to_json_string}), so a config written by {@link #python} differs from the base's only in
 * the keys whose values changed.
 */
public final class Json {
    private Json() {
    }

    /**
     * {@code json.dumps(node, indent=2, sort_keys=True) + "\n"} byte for byte, as Python writes it:
     * keys sorted by code point, {@code ", "} and {@code ": "} separators with each member on its own
     * line, empty containers as {@code {}} and {@code []}, floats as Python's {@code repr}
     * ({@link PythonFloat}), and every character outside printable ASCII escaped as a backslash, {@code u} and four hex
     * digits (ensure_ascii).
     */
    public static String python(JsonNode node) {
        StringBuilder sb = new StringBuilder();
        write(node, 0, sb);
        return sb.append('\n').toString();
    }

    private static void write(JsonNode n, int depth, StringBuilder sb) {
        if (n.isObject()) {
            List<Map.Entry<String, JsonNode>> fields = new ArrayList<>();
            for (Iterator<Map.Entry<String, JsonNode>> it = n.fields(); it.hasNext(); ) {
                fields.add(it.next());
            }
            if (fields.isEmpty()) {
                sb.append("{}");
                return;
            }
            fields.sort((a, b) -> compareCodePoints(a.getKey(), b.getKey()));
            sb.append('{');
            for (int i = 0; i < fields.size(); i++) {
                sb.append(i == 0 ? "\n" : ",\n");
                indent(depth + 1, sb);
                string(fields.get(i).getKey(), sb);
                sb.append(": ");
                write(fields.get(i).getValue(), depth + 1, sb);
            }
            sb.append('\n');
            indent(depth, sb);
            sb.append('}');
        } else if (n.isArray()) {
            if (n.isEmpty()) {
                sb.append("[]");
                return;
            }
            sb.append('[');
            for (int i = 0; i < n.size(); i++) {
                sb.append(i == 0 ? "\n" : ",\n");
                indent(depth + 1, sb);
                write(n.get(i), depth + 1, sb);
            }
            sb.append('\n');
            indent(depth, sb);
            sb.append(']');
        } else if (n.isTextual()) {
            string(n.textValue(), sb);
        } else if (n.isIntegralNumber()) {
            sb.append(n.bigIntegerValue());
        } else if (n.isNumber()) {
            sb.append(PythonFloat.repr(n.doubleValue()));
        } else if (n.isBoolean()) {
            sb.append(n.booleanValue() ? "true" : "false");
        } else if (n.isNull() || n.isMissingNode()) {
            sb.append("null");
        } else {
            throw new IllegalArgumentException("not a JSON value: " + n.getNodeType());
        }
    }

    private static void indent(int depth, StringBuilder sb) {
        sb.append("  ".repeat(depth));
    }

    /** Python's sort order of str keys: by code point (Java's String order is by UTF-16 unit). */
    static int compareCodePoints(String a, String b) {
        int i = 0;
        int j = 0;
        while (i < a.length() && j < b.length()) {
            int ca = a.codePointAt(i);
            int cb = b.codePointAt(j);
            if (ca != cb) {
                return Integer.compare(ca, cb);
            }
            i += Character.charCount(ca);
            j += Character.charCount(cb);
        }
        return Integer.compare(a.length() - i, b.length() - j);
    }

    /** json's ensure_ascii string: the short escapes it knows, and a backslash, {@code u} and four lowercase hex digits for the rest outside ' '..'~'. */
    private static void string(String s, StringBuilder sb) {
        sb.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\n': sb.append("\\n"); break;
                case '\r': sb.append("\\r"); break;
                case '\t': sb.append("\\t"); break;
                case '\b': sb.append("\\b"); break;
                case '\f': sb.append("\\f"); break;
                default:
                    if (c < ' ' || c > '~') {
                        sb.append(String.format("\\u%04x", (int) c));
                    } else {
                        sb.append(c);
                    }
            }
        }
        sb.append('"');
    }
}
