package org.loramerge.engine;

import java.math.BigDecimal;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.loramerge.format.FloatFormat;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The expansion arithmetic that settles elements at a rounding boundary: every sum it rounds must
 * round as the exact decimal value of the same sum does (BigDecimal, which shares nothing with it),
 * on the boundary, one double step either side of it, under cancellation, at zero and at overflow.
 */
class ExpansionTest {
    /** s·a·b terms and w, as the merge forms them; the reference sums the same terms in BigDecimal. */
    private static void check(FloatFormat f, double w, double[] s, double[] a, double[] b) {
        Expansion x = new Expansion();
        x.add(w);
        BigDecimal exact = new BigDecimal(w);
        for (int k = 0; k < a.length; k++) {
            x.addScaledProduct(s[k], a[k], b[k]);
            exact = exact.add(new BigDecimal(s[k]).multiply(new BigDecimal(a[k])).multiply(new BigDecimal(b[k])));
        }
        assertTrue(x.isExact());
        double want = ExactMath.round(exact, f);
        double got = x.roundTo(f);
        assertEquals(Double.doubleToRawLongBits(want), Double.doubleToRawLongBits(got),
                f + ": " + exact + " rounds to " + want + ", the expansion gave " + got);
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void valuesOnAndBesideEveryKindOfRoundingBoundaryRoundAsTheirExactDecimal(FloatFormat f) {
        SplittableRandom rnd = new SplittableRandom(f.ordinal() * 7919L + 1);
        for (int trial = 0; trial < 20_000; trial++) {
            // a format value and its neighbour, the midpoint between them as the target of w + ΔW
            double y = f.round((rnd.nextDouble() - 0.5) * Math.scalb(1.0, rnd.nextInt(-20, 12)));
            double mid = f.midpoint(y, f.nextUp(y));
            int offset = rnd.nextInt(-2, 3); // on the boundary, or a few units of 2^-60 relative to either side
            double target = mid + offset * Math.ulp(mid) * (rnd.nextBoolean() ? 1 : 0x1p-7);
            // w is bf16-like, the rest comes from two products whose sum is exact in double:
            // target − w split into a product of bf16-representable factors and a remainder
            double w = FloatFormat.BF16.round(target * (1 + 0.01 * rnd.nextGaussian()));
            double rest = target - w;
            double a1 = FloatFormat.BF16.round(rest * 0.75);
            double[] a = {a1, 1.0, 1.0};
            double[] b = {1.0, rest - a1, 0};
            double[] s = {1.0, 1.0, 1.0};
            b[2] = target - (w + a[0] * b[0] + a[1] * b[1]); // whatever double rounding left over
            check(f, w, s, a, b);
        }
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void bf16FactorsWithAnArbitraryScaleRoundAsTheirExactDecimal(FloatFormat f) {
        SplittableRandom rnd = new SplittableRandom(42 + f.ordinal());
        for (int trial = 0; trial < 5_000; trial++) {
            int r = 1 + rnd.nextInt(32);
            double[] s = new double[r];
            double[] a = new double[r];
            double[] b = new double[r];
            double scale = rnd.nextBoolean() ? 2.0 : 16 / Math.sqrt(r);
            for (int k = 0; k < r; k++) {
                s[k] = scale;
                a[k] = FloatFormat.BF16.round(0.02 * rnd.nextGaussian());
                b[k] = FloatFormat.BF16.round(0.02 * rnd.nextGaussian());
            }
            check(f, FloatFormat.BF16.round(0.02 * rnd.nextGaussian()), s, a, b);
        }
    }

    @Test
    void exactCancellationToZeroIsPositiveZeroAndTinyResultsKeepTheirSign() {
        check(FloatFormat.BF16, 0.5, new double[] {1}, new double[] {-0.5}, new double[] {1});
        // half the smallest subnormal below zero: a tie between -min and -0, to even: -0
        double min = FloatFormat.F16.minValue();
        check(FloatFormat.F16, 0.0, new double[] {1}, new double[] {-min / 2}, new double[] {1});
        check(FloatFormat.F16, 0.0, new double[] {1}, new double[] {min / 2}, new double[] {1});
        check(FloatFormat.F16, 0.0, new double[] {1, 1}, new double[] {min / 2, 0x1p-60}, new double[] {1, 1});
    }

    @ParameterizedTest
    @EnumSource(FloatFormat.class)
    void theOverflowThresholdRoundsToInfinityAndJustBelowItToTheLargestValue(FloatFormat f) {
        double threshold = f.midpoint(f.maxFinite(), Double.POSITIVE_INFINITY);
        double step = Math.ulp(threshold);
        check(f, f.maxFinite(), new double[] {1}, new double[] {threshold - f.maxFinite()}, new double[] {1});
        check(f, f.maxFinite(), new double[] {1, 1}, new double[] {threshold - f.maxFinite(), -step}, new double[] {1, 1});
        check(f, -f.maxFinite(), new double[] {1}, new double[] {-(threshold - f.maxFinite())}, new double[] {1});
    }

    @Test
    void productsTooSmallForAnExactErrorTermAreRefusedNotRounded() {
        Expansion x = new Expansion();
        x.add(1.0);
        x.addScaledProduct(1.0, 0x1p-500, 0x1p-500);
        assertFalse(x.isExact());
    }
}
