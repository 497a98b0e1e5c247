package org.loramerge.format;

import java.math.BigDecimal;
import java.util.SplittableRandom;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.engine.ExactReference;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

class FloatFormatTest {
    /** Doubles that stress rounding: exact midpoints, their neighbours, subnormals, the overflow threshold. */
    static double[] edgeValues(FloatFormat f) {
        double max = f.maxFinite();
        double ulpMax = f.ulp(max);
        double minSub = f == FloatFormat.F16 ? 0x1p-24 : f == FloatFormat.BF16 ? 0x1p-133 : 0x1p-149;
        return new double[] {
                0.0, -0.0, 1.0, -1.0, 1 + f.ulp(1) / 2, 1 + 3 * f.ulp(1) / 2, Math.nextUp(1 + f.ulp(1) / 2), Math.nextDown(1 + f.ulp(1) / 2),
                1 - f.ulp(1) / 4, Math.nextDown(1 - f.ulp(1) / 4), Math.nextUp(1 - f.ulp(1) / 4),
                max, -max, max + ulpMax / 2, Math.nextDown(max + ulpMax / 2), Math.nextUp(max + ulpMax / 2), -(max + ulpMax / 2),
                minSub, minSub / 2, Math.nextUp(minSub / 2), 3 * minSub / 2, -minSub / 2, minSub * 0.25,
                Math.scalb(1.0, f == FloatFormat.F16 ? -14 : -126), 1e-300, -1e-300, 1e300};
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void roundingIsCorrectOnEdgeCases(FloatFormat f) {
        for (double x : edgeValues(f)) {
            check(f, x);
        }
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void roundingIsCorrectOnRandomValues(FloatFormat f) {
        SplittableRandom rnd = new SplittableRandom(42);
        for (int i = 0; i < 20000; i++) {
            double x = Double.longBitsToDouble(rnd.nextLong());
            if (!Double.isFinite(x)) {
                continue;
            }
            // bring the exponent into and around the format's range
            int span = f == FloatFormat.F16 ? 40 : 280;
            x = Math.scalb(Math.scalb(x, -Math.getExponent(x)), rnd.nextInt(span) - span / 2 - (f == FloatFormat.F16 ? 8 : 0));
            check(f, x);
        }
    }

    private static void check(FloatFormat f, double x) {
        int expected = ExactReference.roundBits(new BigDecimal(x), f.dtype());
        int got = f.encode(f.round(x));
        if (x == 0) {
            expected = Double.doubleToRawLongBits(x) < 0 ? (f == FloatFormat.F32 ? 0x80000000 : 0x8000) : 0;
        }
        assertEquals(Integer.toHexString(expected), Integer.toHexString(got), f + " rounding of " + x + " (" + Double.toHexString(x) + ")");
    }

    /** The merge's fast path: when it answers, every value within err of x rounds to its answer; near boundaries it declines. */
    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void fastPathAnswersOnlyWhenTheWholeIntervalRoundsAlike(FloatFormat f) {
        SplittableRandom rnd = new SplittableRandom(7);
        int answered = 0;
        for (int i = 0; i < 20000; i++) {
            double x = (rnd.nextDouble() * 2 - 1) * Math.scalb(1.0, rnd.nextInt(f == FloatFormat.F16 ? 30 : 60) - (f == FloatFormat.F16 ? 15 : 30));
            if (i % 4 == 0) {
                // right at a midpoint of the format, or a hair off it
                double y = f.round(x);
                x = y + f.ulp(y) / 2 + (i % 8 == 0 ? 0 : Math.ulp(y) * (rnd.nextInt(5) - 2));
            }
            double err = Math.abs(x) * Math.scalb(1.0, -(rnd.nextInt(50) + 3));
            long fast = f.roundIfDecided(x, err);
            if (fast < 0) {
                continue;
            }
            answered++;
            BigDecimal lo = new BigDecimal(x).subtract(new BigDecimal(err));
            BigDecimal hi = new BigDecimal(x).add(new BigDecimal(err));
            assertEquals(Integer.toHexString(ExactReference.roundBits(lo, f.dtype())), Long.toHexString(fast), "x " + x + " err " + err);
            assertEquals(Integer.toHexString(ExactReference.roundBits(hi, f.dtype())), Long.toHexString(fast), "x " + x + " err " + err);
            assertEquals(f.encode(f.round(x)), (int) fast);
        }
        assertTrue(answered > 5000, "the fast path should answer most of the time: " + answered);
        assertEquals(-1, f.roundIfDecided(1 + f.ulp(1) / 2, 0), "an exact tie is left to the slow path");
        assertEquals(-1, f.roundIfDecided(0.0, 0), "zero is left to the slow path");
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void decodeEncodeRoundTripsEveryPattern(FloatFormat f) {
        int limit = f == FloatFormat.F32 ? 1 << 16 : 1 << 16;
        for (int i = 0; i < limit; i++) {
            int bits = f == FloatFormat.F32 ? i * 65537 : i;
            if (f.isNonFinite(bits)) {
                continue;
            }
            double v = f.decode(bits);
            assertEquals(bits, f.encode(v), () -> "pattern " + Integer.toHexString(bits));
            assertTrue(f.round(v) == v || (v == 0), "a representable value rounds to itself");
        }
    }
}
