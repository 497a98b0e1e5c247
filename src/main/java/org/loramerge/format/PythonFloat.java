package org.loramerge.format;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;

/**
 * Python's {@code repr(float)}, which {@code json.dumps} writes: the shortest decimal that reads
 * back as the same double, in fixed notation when its decimal exponent is in [-4, 16) and
 * {@code d.ddde±XX} otherwise (CPython Python/pystrtod.c format_float_short, mode 'r'). Java 17's
 * {@code Double.toString} is not always the shortest, and formats differently, so neither the quant
 * state JSON (bitsandbytes' bytes) nor config.json (transformers' bytes, {@link Json#python}) would
 * match without this.
 */
public final class PythonFloat {
    private PythonFloat() {
    }

    public static String repr(double v) {
        if (Double.isNaN(v)) {
            return "NaN";
        }
        if (Double.isInfinite(v)) {
            return v > 0 ? "Infinity" : "-Infinity";
        }
        if (v == 0) {
            return (Double.doubleToRawLongBits(v) < 0) ? "-0.0" : "0.0";
        }
        String sign = v < 0 ? "-" : "";
        BigDecimal exact = new BigDecimal(Math.abs(v));
        BigDecimal shortest = null;
        for (int p = 1; p <= 17 && shortest == null; p++) {
            BigDecimal best = null;
            for (RoundingMode mode : new RoundingMode[] {RoundingMode.HALF_EVEN, RoundingMode.FLOOR, RoundingMode.CEILING}) {
                BigDecimal c = exact.round(new MathContext(p, mode));
                if (Double.parseDouble(c.toString()) == Math.abs(v)
                        && (best == null || c.subtract(exact).abs().compareTo(best.subtract(exact).abs()) < 0)) {
                    best = c;
                }
            }
            shortest = best;
        }
        BigDecimal s = shortest.stripTrailingZeros();
        String digits = s.unscaledValue().toString();
        // value = 0.digits × 10^decpt
        int decpt = digits.length() - s.scale();
        StringBuilder out = new StringBuilder(sign);
        if (decpt > -4 && decpt <= 16) {
            if (decpt <= 0) {
                out.append("0.").append("0".repeat(-decpt)).append(digits);
            } else if (decpt >= digits.length()) {
                out.append(digits).append("0".repeat(decpt - digits.length())).append(".0");
            } else {
                out.append(digits, 0, decpt).append('.').append(digits.substring(decpt));
            }
        } else {
            out.append(digits.charAt(0));
            if (digits.length() > 1) {
                out.append('.').append(digits.substring(1));
            }
            int exp = decpt - 1;
            out.append('e').append(exp < 0 ? '-' : '+');
            String e = Integer.toString(Math.abs(exp));
            if (e.length() < 2) {
                out.append('0');
            }
            out.append(e);
        }
        return out.toString();
    }
}
