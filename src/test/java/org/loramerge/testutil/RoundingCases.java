package org.loramerge.testutil;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.format.TensorInfo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Merges built to land on, or next to, the rounding boundaries of BF16, F16 and F32, with their
 * exact results from a reference of its own: dyadic rationals in {@link BigInteger}s and a
 * round-to-nearest-even written here from the formats' definitions. Nothing of the engine's
 * arithmetic ({@code ExactMath}, {@code FloatFormat}) is used: inputs are encoded, and outputs
 * decoded, by this class too.
 *
 * <p>Per output format one tiny model is written, adapted weights of shape [1, C]: each column is
 * a case, with its own W and its own products U[0,k]·V[k,j] (U is the one row of lora_B, V is
 * lora_A):
 * <ul>
 * <li>{@code model.layers.0.self_attn.q_proj}, F32 factors, U all ones, s = 1 (and
 * {@code layers.3}, U all 2^-64, for the products too small for F32): exact midpoints between
 * neighbours of every kind (mid-binade with an odd and an even lower neighbour, below and above
 * a power of two, subnormal, the subnormal-normal edge, the largest finite value and infinity,
 * negative), each exactly, and 2^-60 relative above and below; the same with an error injector
 * (a pair +P, -P around a small product, so that the fp64 sum loses a quarter of P's ulp in a
 * chosen direction and lands just across the midpoint); heavy cancellation, W = -H and
 * ΔW = H + T, whose fp64 sum keeps none of T's low bits; zero results and their sign;</li>
 * <li>{@code model.layers.1.self_attn.q_proj}, r = 3 and alpha = 8: s = fl(8/3), ΔW = s·(3h/8)
 * lies a hair below half an ulp h, so the answer depends on s being the double PEFT computes;</li>
 * <li>{@code model.layers.2.self_attn.q_proj}, BF16 factors with short significands (what bf16
 * training produces): exact products, W + ΔW exactly on a midpoint (ties to even), and some
 * ordinary values as a control.</li>
 * </ul>
 * Where W + ΔW overflows (F16's 65520 and up; BF16 and F32 past their largest value) the answer is
 * infinity: merge with non-finite results allowed.
 */
public final class RoundingCases {
    private RoundingCases() {
    }

    // ------------------------------------------------------------------ exact arithmetic

    /** The exact value m·2^e. */
    public record Dyadic(BigInteger m, int e) implements Comparable<Dyadic> {
        public static final Dyadic ZERO = new Dyadic(BigInteger.ZERO, 0);

        public static Dyadic of(BigInteger m, int e) {
            if (m.signum() == 0) {
                return ZERO;
            }
            int tz = m.getLowestSetBit();
            return new Dyadic(m.shiftRight(tz), e + tz);
        }

        public static Dyadic of(long m, int e) {
            return of(BigInteger.valueOf(m), e);
        }

        public static Dyadic pow2(int e) {
            return new Dyadic(BigInteger.ONE, e);
        }

        /** A double's exact value, from its bits (finite only). */
        public static Dyadic ofDouble(double x) {
            long bits = Double.doubleToRawLongBits(x);
            int exp = (int) (bits >>> 52) & 0x7FF;
            long frac = bits & ((1L << 52) - 1);
            if (exp == 0x7FF) {
                throw new IllegalArgumentException("not finite: " + x);
            }
            long m = exp == 0 ? frac : frac | (1L << 52);
            int e = (exp == 0 ? 1 : exp) - 1075;
            return of(bits < 0 ? -m : m, e);
        }

        public Dyadic add(Dyadic o) {
            if (m.signum() == 0) {
                return o;
            }
            if (o.m.signum() == 0) {
                return this;
            }
            int low = Math.min(e, o.e);
            return of(m.shiftLeft(e - low).add(o.m.shiftLeft(o.e - low)), low);
        }

        public Dyadic subtract(Dyadic o) {
            return add(o.negate());
        }

        public Dyadic negate() {
            return new Dyadic(m.negate(), e);
        }

        public Dyadic multiply(Dyadic o) {
            return of(m.multiply(o.m), e + o.e);
        }

        public int signum() {
            return m.signum();
        }

        /** floor(log2 |x|); x must not be zero. */
        public int exponent() {
            return e + m.abs().bitLength() - 1;
        }

        /** The double of this value, which must be one. */
        public double toDouble() {
            if (m.signum() == 0) {
                return 0.0;
            }
            if (m.abs().bitLength() > 53) {
                throw new IllegalArgumentException(this + " is not a double");
            }
            double d = Math.scalb((double) m.longValueExact(), e);
            if (!ofDouble(d).equals(this)) {
                throw new IllegalArgumentException(this + " is not a double");
            }
            return d;
        }

        @Override
        public int compareTo(Dyadic o) {
            return subtract(o).signum();
        }

        @Override
        public String toString() {
            return m + "*2^" + e;
        }
    }

    /** The three formats, from their definitions: precision (hidden bit included) and exponent field width. */
    public enum Fmt {
        BF16(8, 8, DType.BF16), F16(11, 5, DType.F16), F32(24, 8, DType.F32);

        public final int precision;
        public final int exponentBits;
        public final DType dtype;
        final int bias;
        final int emin;
        final int emax;

        Fmt(int precision, int exponentBits, DType dtype) {
            this.precision = precision;
            this.exponentBits = exponentBits;
            this.dtype = dtype;
            this.bias = (1 << (exponentBits - 1)) - 1;
            this.emin = 1 - bias;
            this.emax = bias;
        }

        int totalBits() {
            return exponentBits + precision;
        }

        int signBit() {
            return 1 << (totalBits() - 1);
        }

        int infBits() {
            return ((1 << exponentBits) - 1) << (precision - 1);
        }

        /** The smallest subnormal, 2^(emin - p + 1). */
        Dyadic minSubnormal() {
            return Dyadic.pow2(emin - precision + 1);
        }

        Dyadic maxFinite() {
            return Dyadic.of((1L << precision) - 1, emax - precision + 1);
        }

        /** Bytes per element. */
        int size() {
            return totalBits() / 8;
        }
    }

    /** x rounded to nearest, ties to even, as bits of {@code f}; beyond the largest finite value ±infinity; an exact zero is +0. */
    public static int roundBits(Dyadic x, Fmt f) {
        if (x.signum() == 0) {
            return 0;
        }
        int sign = x.signum() < 0 ? f.signBit() : 0;
        BigInteger a = x.m().abs();
        int exponent = Math.max(x.exponent(), f.emin);
        int q = exponent - (f.precision - 1); // the quantum's exponent
        BigInteger n;
        if (x.e() >= q) {
            n = a.shiftLeft(x.e() - q);
        } else {
            int shift = q - x.e();
            n = a.shiftRight(shift);
            int c = a.subtract(n.shiftLeft(shift)).compareTo(BigInteger.ONE.shiftLeft(shift - 1));
            if (c > 0 || c == 0 && n.testBit(0)) {
                n = n.add(BigInteger.ONE);
            }
        }
        if (n.bitLength() > f.precision) { // rounded up to the next power of two
            n = n.shiftRight(1);
            q++;
        }
        if (n.signum() == 0) {
            return sign; // too small for the smallest subnormal: a zero of x's sign
        }
        if (n.bitLength() < f.precision) {
            return sign | n.intValueExact(); // subnormal
        }
        int biased = q + f.precision - 1 + f.bias;
        if (biased >= (1 << f.exponentBits) - 1) {
            return sign | f.infBits();
        }
        return sign | biased << (f.precision - 1) | (n.intValueExact() - (1 << (f.precision - 1)));
    }

    /** The bits of x, which must be a finite value of {@code f}. */
    public static int exactBits(Dyadic x, Fmt f) {
        int bits = roundBits(x, f);
        if ((bits & f.infBits()) == f.infBits() || !value(bits, f).equals(x)) {
            throw new IllegalArgumentException(x + " is not a " + f + " value");
        }
        return bits;
    }

    /** The exact value of finite bits of {@code f}. */
    public static Dyadic value(int bits, Fmt f) {
        int exp = (bits >>> (f.precision - 1)) & ((1 << f.exponentBits) - 1);
        int frac = bits & ((1 << (f.precision - 1)) - 1);
        if (exp == (1 << f.exponentBits) - 1) {
            throw new IllegalArgumentException("not finite: 0x" + Integer.toHexString(bits));
        }
        Dyadic v = exp == 0 ? Dyadic.of(frac, f.emin - f.precision + 1) : Dyadic.of(frac | (1 << (f.precision - 1)), exp - f.bias - f.precision + 1);
        return (bits & f.signBit()) != 0 ? v.negate() : v;
    }

    public static String hex(int bits, Fmt f) {
        return String.format(Locale.ROOT, "0x%0" + f.totalBits() / 4 + "x", bits);
    }

    // ------------------------------------------------------------------ the cases

    /** One output element: W, its column of V (lora_A), whose products with U (lora_B) the engine sums in the order k, and its name. */
    public record Column(String label, Dyadic w, int wBits, Dyadic[] v) {
    }

    /** One adapted weight [1, columns] of rank r: lora_B is the row {@code u}, lora_A holds products[k] / u[k]. */
    public record Family(String module, Fmt out, Fmt adapterDtype, int rank, double alpha, Dyadic[] u, List<Column> columns) {
        /** The products U[0,k]·V[k,j] of column j, in the order k. */
        public Dyadic[] products(int j) {
            Dyadic[] p = new Dyadic[rank];
            for (int k = 0; k < rank; k++) {
                p[k] = u[k].multiply(columns.get(j).v()[k]);
            }
            return p;
        }

        public double scale() {
            return alpha / rank; // as PEFT computes lora_alpha / r, a Python float
        }

        public String weightName() {
            return module + ".weight";
        }

        /** The exact W + s·Σ_k U[0,k]·V[k,j] rounded once to {@code out}; a zero delta of zero products keeps W. */
        public int expectedBits(int j) {
            Column c = columns.get(j);
            Dyadic sum = Dyadic.ZERO;
            boolean allZero = true;
            for (Dyadic p : products(j)) {
                sum = sum.add(p);
                allZero &= p.signum() == 0;
            }
            if (allZero) {
                return c.wBits; // nothing is added: W stays, a negative zero too
            }
            return roundBits(c.w.add(Dyadic.ofDouble(scale()).multiply(sum)), out); // an exact zero is +0, as x + (-x) is in IEEE arithmetic
        }

        /**
         * What a plain fp64 evaluation gives, summed in the CPU engine's order (k ascending, then
         * W + s·sum) and rounded once: where it differs from {@link #expectedBits}, only a correct
         * error bound and an exact fallback give the right answer.
         */
        public int naiveBits(int j) {
            Column c = columns.get(j);
            double d = 0;
            for (Dyadic p : products(j)) {
                d += p.toDouble();
            }
            double v = c.w.toDouble() + scale() * d;
            if (Double.isInfinite(v)) {
                return (v < 0 ? out.signBit() : 0) | out.infBits();
            }
            int bits = roundBits(Dyadic.ofDouble(v), out);
            return v == 0 && Double.doubleToRawLongBits(v) < 0 ? bits | out.signBit() : bits;
        }
    }

    /** Products of the F32-factor families: three slots for the error injector, then six for the chunks of ΔW. */
    private static final int INJECTOR_SLOTS = 3;
    private static final int EXACT_RANK = 9;
    /**
     * The one value of U in each F32-factor family: 1, and 2^-64 for the products too small for
     * F32 (subnormal outputs). One value keeps the bound's ‖U‖·‖V‖ close to Σ|U·V|.
     */
    private static final int[] EXACT_U_EXPONENTS = {0, -64};

    /** Neighbouring pairs (L, next of L away from zero) of every kind, with names. */
    private record Pair(String name, Dyadic low, Dyadic next) {
        Dyadic midpoint() {
            return low.add(next).multiply(Dyadic.pow2(-1));
        }
    }

    private static List<Pair> pairs(Fmt f) {
        List<Pair> out = new ArrayList<>();
        Dyadic ulp1 = Dyadic.pow2(1 - f.precision); // spacing in [1, 2)
        Dyadic one = Dyadic.pow2(0);
        out.add(new Pair("1+ulp (odd)", one.add(ulp1), one.add(ulp1).add(ulp1)));
        out.add(new Pair("1+2ulp (even)", one.add(ulp1).add(ulp1), one.add(ulp1).add(ulp1).add(ulp1)));
        out.add(new Pair("below 2", Dyadic.pow2(1).subtract(ulp1), Dyadic.pow2(1)));
        out.add(new Pair("above 2", Dyadic.pow2(1), Dyadic.pow2(1).add(ulp1).add(ulp1)));
        out.add(new Pair("-(1+ulp)", one.add(ulp1).negate(), one.add(ulp1).add(ulp1).negate()));
        Dyadic weight = Dyadic.of(5L << (f.precision - 4), -6 - (f.precision - 2)); // 0.0195..: a typical weight
        out.add(new Pair("0.0195", weight, weight.add(Dyadic.pow2(-6 - (f.precision - 1)))));
        Dyadic sub = f.minSubnormal();
        out.add(new Pair("subnormal 3 (odd)", sub.multiply(Dyadic.of(3, 0)), sub.multiply(Dyadic.of(4, 0))));
        out.add(new Pair("subnormal 2 (even)", sub.multiply(Dyadic.of(2, 0)), sub.multiply(Dyadic.of(3, 0))));
        out.add(new Pair("largest subnormal", Dyadic.pow2(f.emin).subtract(sub), Dyadic.pow2(f.emin)));
        out.add(new Pair("largest finite", f.maxFinite(), Dyadic.pow2(f.emax + 1)));
        out.add(new Pair("-largest finite", f.maxFinite().negate(), Dyadic.pow2(f.emax + 1).negate()));
        return out;
    }

    /** A column of an F32-factor family before U is chosen: W and the products in the order k. */
    private record Draft(String label, Dyadic w, int wBits, Dyadic[] products) {
    }

    /**
     * W, then the products: {@code injector} in the first slots, then {@code parts}, each cut into
     * chunks of at most 24 significant bits from the top (so that their fp64 sum is exact, or
     * rounds towards the part, never across it).
     */
    private static Draft exactColumn(String label, Fmt f, Dyadic w, int wBits, Dyadic[] injector, Dyadic... parts) {
        Dyadic[] p = new Dyadic[EXACT_RANK];
        Arrays.fill(p, Dyadic.ZERO);
        System.arraycopy(injector, 0, p, 0, injector.length);
        int slot = INJECTOR_SLOTS;
        for (Dyadic part : parts) {
            Dyadic rest = part;
            while (rest.signum() != 0) {
                if (slot == EXACT_RANK) {
                    throw new IllegalStateException(label + ": more than " + (EXACT_RANK - INJECTOR_SLOTS) + " chunks");
                }
                int bits = rest.m().abs().bitLength();
                BigInteger top = rest.m().abs().shiftRight(Math.max(0, bits - 24)); // truncated towards zero
                Dyadic chunk = Dyadic.of(rest.signum() < 0 ? top.negate() : top, rest.e() + Math.max(0, bits - 24));
                p[slot++] = chunk;
                rest = rest.subtract(chunk);
            }
        }
        return new Draft(label, w, wBits, p);
    }

    private static Draft exactColumn(String label, Fmt f, Dyadic w, Dyadic... parts) {
        return exactColumn(label, f, w, exactBits(w, f), new Dyadic[0], parts);
    }

    /** The F32-factor families of the drafts: each goes where every product / U is an F32 value. */
    private static List<Family> exactFamilies(Fmt f, List<Draft> drafts) {
        List<Family> out = new ArrayList<>();
        List<Draft> left = drafts;
        for (int i = 0; i < EXACT_U_EXPONENTS.length; i++) {
            Dyadic[] u = new Dyadic[EXACT_RANK];
            Arrays.fill(u, Dyadic.pow2(EXACT_U_EXPONENTS[i]));
            List<Column> cols = new ArrayList<>();
            List<Draft> rest = new ArrayList<>();
            for (Draft d : left) {
                Dyadic[] v = new Dyadic[EXACT_RANK];
                boolean fits = true;
                for (int k = 0; k < EXACT_RANK; k++) {
                    v[k] = d.products[k].multiply(inverse(u[k]));
                    fits &= f32Exact(v[k]);
                }
                if (fits) {
                    cols.add(new Column(d.label, d.w, d.wBits, v));
                } else {
                    rest.add(d);
                }
            }
            if (!cols.isEmpty()) {
                out.add(new Family("model.layers." + (i == 0 ? 0 : 3) + ".self_attn.q_proj", f, Fmt.F32, EXACT_RANK, EXACT_RANK, u, cols));
            }
            left = rest;
        }
        if (!left.isEmpty()) {
            throw new IllegalStateException(left.get(0).label + ": products do not fit F32 factors");
        }
        return out;
    }

    private static Dyadic inverse(Dyadic powerOfTwo) {
        return Dyadic.pow2(-powerOfTwo.e());
    }

    private static boolean f32Exact(Dyadic v) {
        if (v.signum() == 0) {
            return true;
        }
        int bits = roundBits(v, Fmt.F32);
        return (bits & Fmt.F32.infBits()) != Fmt.F32.infBits() && value(bits, Fmt.F32).equals(v);
    }

    private static Dyadic offset(Dyadic t, int sign) {
        return sign == 0 ? Dyadic.ZERO : sign > 0 ? t : t.negate();
    }

    private static String offsetName(int sign) {
        return sign == 0 ? "" : sign > 0 ? " + 2^-60 rel" : " - 2^-60 rel";
    }

    /** The F32-factor families of {@code f}: midpoints, injected errors, cancellation, zeros. */
    static List<Family> exactFamilies(Fmt f) {
        List<Draft> cols = new ArrayList<>();
        for (Pair pr : pairs(f)) {
            Dyadic mid = pr.midpoint();
            Dyadic t = Dyadic.pow2(mid.exponent() - 60); // 2^-60 relative
            Dyadic half = mid.subtract(pr.low);
            // exactly on the midpoint, and 2^-60 relative above and below it
            for (int sign = -1; sign <= 1; sign++) {
                cols.add(exactColumn(pr.name + " midpoint" + offsetName(sign), f, pr.low, half, offset(t, sign)));
            }
            // the same with an error injector: fl(fl(P + x) - P) = 0 loses x = ±ulp(P)/4, and the fp64 sum lands just across the midpoint
            int eP = mid.exponent() - f.precision + 44;
            Dyadic bigP = Dyadic.pow2(eP);
            Dyadic quarter = Dyadic.pow2(eP - 54); // a quarter of P's double ulp, 2^(eP - 52)
            if (!f32Exact(bigP) && !f32Exact(bigP.multiply(Dyadic.pow2(64)))) {
                continue; // P beyond F32's range (BF16's and F32's largest values)
            }
            for (int sign = -1; sign <= 1; sign++) {
                for (int dir : sign == 0 ? new int[] {-1, 1} : new int[] {sign}) {
                    Dyadic x = dir > 0 ? quarter : quarter.negate();
                    cols.add(exactColumn(pr.name + " midpoint" + offsetName(sign) + " fp64 sum off by " + (dir > 0 ? "-" : "+") + "ulp(P)/4",
                            f, pr.low, exactBits(pr.low, f), new Dyadic[] {bigP, x, bigP.negate()}, half.subtract(x), offset(t, sign)));
                }
            }
        }
        // heavy cancellation: W = -H, ΔW = H + T with T's low bits far below H's double ulp (BF16, F32; F16 has no room)
        for (Dyadic h : new Dyadic[] {Dyadic.pow2(0), Dyadic.of(3, -3)}) {
            int eT = h.exponent() - 60 + f.precision;
            if (eT < f.emin) {
                continue;
            }
            Dyadic ulpT = Dyadic.pow2(eT - f.precision + 1);
            for (int n : new int[] {0, 1, 2, 3, 5}) {
                Dyadic low = Dyadic.pow2(eT).add(ulpT.multiply(Dyadic.of(n, 0)));
                Dyadic mid = low.add(ulpT.multiply(Dyadic.pow2(-1)));
                Dyadic t = Dyadic.pow2(mid.exponent() - 60);
                for (int sign = -1; sign <= 1; sign++) {
                    cols.add(exactColumn("W=-" + h.toDouble() + ", W+dW=2^" + eT + "*(1+" + n + "ulp+ulp/2)" + offsetName(sign), f,
                            h.negate(), h, mid, offset(t, sign)));
                }
            }
        }
        // zero results and their sign
        Dyadic one = Dyadic.pow2(0);
        Dyadic x = one.add(Dyadic.pow2(1 - f.precision));
        Dyadic sub = f.minSubnormal();
        Dyadic quarterSub = sub.multiply(Dyadic.pow2(-2));
        int negZero = f.signBit();
        cols.add(exactColumn("x - x = +0", f, x, x.negate()));
        cols.add(exactColumn("-x + x = +0", f, x.negate(), x));
        cols.add(exactColumn("sub - sub = +0", f, sub, sub.negate()));
        cols.add(exactColumn("+0 - sub/4 = -0", f, Dyadic.ZERO, quarterSub.negate()));
        cols.add(exactColumn("-0 + sub/4 = +0", f, Dyadic.ZERO, negZero, new Dyadic[0], quarterSub));
        cols.add(exactColumn("-0 - sub/4 = -0", f, Dyadic.ZERO, negZero, new Dyadic[0], quarterSub.negate()));
        cols.add(exactColumn("-0 + nothing = -0", f, Dyadic.ZERO, negZero, new Dyadic[0]));
        cols.add(exactColumn("+0 + nothing = +0", f, Dyadic.ZERO));
        cols.add(exactColumn("-sub + (sub - sub/4) = -0", f, sub.negate(), sub, quarterSub.negate()));
        cols.add(exactColumn("-1 + (1 - sub/4) = -0", f, one.negate(), one, quarterSub.negate()));
        cols.add(exactColumn("-1 + (1 - sub) = -sub", f, one.negate(), one, sub.negate()));
        cols.add(exactColumn("1 + (-1 + sub/4) = +0", f, one, one.negate(), quarterSub));
        return exactFamilies(f, cols);
    }

    /** s = fl(8/3) (r = 3, alpha = 8) and ΔW = ±s·(3h/8): a hair below ±h, half an ulp of W = L; with 8/3 exactly, a tie. */
    static Family scaleFamily(Fmt f) {
        List<Column> cols = new ArrayList<>();
        for (Pair pr : pairs(f)) {
            Dyadic chunk = pr.midpoint().subtract(pr.low).multiply(Dyadic.of(3, -3));
            if (!f32Exact(chunk)) {
                continue;
            }
            cols.add(new Column(pr.name + " + fl(8/3)*3h/8", pr.low, exactBits(pr.low, f), new Dyadic[] {chunk, Dyadic.ZERO, Dyadic.ZERO}));
            cols.add(new Column(pr.name + " - fl(8/3)*3h/8", pr.low, exactBits(pr.low, f), new Dyadic[] {Dyadic.ZERO, chunk.negate(), Dyadic.ZERO}));
        }
        Dyadic[] u = {Dyadic.pow2(0), Dyadic.pow2(0), Dyadic.pow2(0)};
        return new Family("model.layers.1.self_attn.q_proj", f, Fmt.F32, 3, 8, u, cols);
    }

    /**
     * BF16 factors with 4-bit significands, s = 2: exact products and sums. Columns are drawn
     * until 24 land exactly on a midpoint of {@code f}; 8 others are kept as a control.
     */
    static Family bf16Family(Fmt f) {
        SplittableRandom rnd = new SplittableRandom(1000 + f.ordinal());
        int rank = 4;
        Dyadic[] u = new Dyadic[rank];
        for (int k = 0; k < rank; k++) {
            u[k] = short4(rnd, rnd.nextInt(-1, 2));
        }
        List<Column> ties = new ArrayList<>();
        List<Column> others = new ArrayList<>();
        Dyadic s = Dyadic.pow2(1);
        for (int tries = 0; ties.size() < 24 && tries < 200_000; tries++) {
            int eW = rnd.nextInt(-6, 2);
            Dyadic w = short4(rnd, eW);
            Dyadic[] v = new Dyadic[rank];
            Dyadic sum = Dyadic.ZERO;
            for (int k = 0; k < rank; k++) {
                v[k] = short4(rnd, eW - f.precision - 1 + rnd.nextInt(-3, 3) - u[k].exponent());
                sum = sum.add(u[k].multiply(v[k]));
            }
            Dyadic exact = w.add(s.multiply(sum));
            if (exact.signum() == 0) {
                continue;
            }
            int q = Math.max(exact.exponent(), f.emin) - f.precision + 1; // the quantum's exponent at the result
            boolean tie = exact.e() == q - 1; // its lowest bit half a quantum: a midpoint
            String label = "bf16 factors W=" + w.toDouble() + (tie ? " tie" : "");
            if (tie) {
                ties.add(new Column(label, w, exactBits(w, f), v));
            } else if (others.size() < 8) {
                others.add(new Column(label, w, exactBits(w, f), v));
            }
        }
        if (ties.size() < 24) {
            throw new IllegalStateException("only " + ties.size() + " ties drawn for " + f);
        }
        List<Column> cols = new ArrayList<>(ties);
        cols.addAll(others);
        return new Family("model.layers.2.self_attn.q_proj", f, Fmt.BF16, rank, rank * 2.0, u, cols);
    }

    /** ±(1 + m/8)·2^e, m in 0..7: a BF16 value with a 4-bit significand. */
    private static Dyadic short4(SplittableRandom rnd, int e) {
        long m = 8 + rnd.nextInt(8);
        return Dyadic.of(rnd.nextBoolean() ? m : -m, e - 3);
    }

    /** Every family of {@code f}. */
    public static List<Family> families(Fmt f) {
        List<Family> all = new ArrayList<>(exactFamilies(f));
        all.add(scaleFamily(f));
        all.add(bf16Family(f));
        return all;
    }

    // ------------------------------------------------------------------ files

    /** Writes the base model (config.json, model.safetensors) and the PEFT adapter of {@code families}. */
    public static void write(List<Family> families, Path base, Path adapter) {
        List<TinyModels.Tensor> weights = new ArrayList<>();
        List<TinyModels.Tensor> lora = new ArrayList<>();
        StringBuilder ranks = new StringBuilder();
        StringBuilder alphas = new StringBuilder();
        for (Family fam : families) {
            int n = fam.columns().size();
            int[] w = new int[n];
            int[] a = new int[fam.rank() * n];
            for (int j = 0; j < n; j++) {
                Column c = fam.columns().get(j);
                w[j] = c.wBits();
                for (int k = 0; k < fam.rank(); k++) {
                    a[k * n + j] = exactBits(c.v()[k], fam.adapterDtype());
                }
            }
            int[] b = new int[fam.rank()];
            for (int k = 0; k < fam.rank(); k++) {
                b[k] = exactBits(fam.u()[k], fam.adapterDtype());
            }
            weights.add(new TinyModels.Tensor(fam.weightName(), fam.out().dtype, new long[] {1, n}, bytes(w, fam.out())));
            lora.add(new TinyModels.Tensor(TinyModels.PEFT_PREFIX + fam.module() + ".lora_A.weight", fam.adapterDtype().dtype,
                    new long[] {fam.rank(), n}, bytes(a, fam.adapterDtype())));
            lora.add(new TinyModels.Tensor(TinyModels.PEFT_PREFIX + fam.module() + ".lora_B.weight", fam.adapterDtype().dtype,
                    new long[] {1, fam.rank()}, bytes(b, fam.adapterDtype())));
            String key = TinyModels.jsonString("^" + fam.module().replace(".", "\\."));
            ranks.append(ranks.length() == 0 ? "" : ", ").append(key).append(": ").append(fam.rank());
            alphas.append(alphas.length() == 0 ? "" : ", ").append(key).append(": ").append(fam.alpha());
        }
        TinyModels.writeModel(base, weights);
        TinyModels.writeAdapter(adapter, TinyModels.loraConfig(8, 8, "[\"q_proj\"]",
                "\"rank_pattern\": {" + ranks + "}, \"alpha_pattern\": {" + alphas + "}"), lora);
    }

    private static byte[] bytes(int[] bits, Fmt f) {
        ByteBuffer b = ByteBuffer.allocate(bits.length * f.size()).order(ByteOrder.LITTLE_ENDIAN);
        for (int x : bits) {
            if (f.size() == 4) {
                b.putInt(x);
            } else {
                b.putShort((short) x);
            }
        }
        return b.array();
    }

    /** The merged bits of {@code family}'s weight in {@code merged}, read from the file's raw bytes. */
    public static int[] mergedBits(Checkpoint merged, Family family) throws IOException {
        TensorInfo t = merged.tensor(family.weightName());
        if (t == null || t.dtype() != family.out().dtype) {
            throw new AssertionError(family.weightName() + " missing or not " + family.out() + " in the merged model");
        }
        SafetensorsFile file = merged.fileOf(t.name());
        ByteBuffer b = file.readAll(t).order(ByteOrder.LITTLE_ENDIAN);
        int n = family.columns().size();
        int[] bits = new int[n];
        for (int j = 0; j < n; j++) {
            bits[j] = family.out().size() == 4 ? b.getInt(b.position() + 4 * j) : b.getShort(b.position() + 2 * j) & 0xFFFF;
        }
        return bits;
    }

    /** Fewest elements per format whose plain fp64 rounding is wrong: the cases must stay adversarial. */
    static final int MIN_FP64_WRONG = 10;

    /**
     * Every element of the merged model equals the reference's bits, and enough of them are
     * elements that a plain fp64 evaluation rounds wrongly (so that the cases keep testing the
     * error bound).
     */
    public static void assertMatchesReference(List<Family> families, Path merged) throws Exception {
        List<String> wrong = new ArrayList<>();
        int fp64Wrong = 0;
        int elements = 0;
        try (Checkpoint m = Checkpoint.open(merged)) {
            for (Family fam : families) {
                int[] got = mergedBits(m, fam);
                for (int j = 0; j < got.length; j++) {
                    int want = fam.expectedBits(j);
                    elements++;
                    if (fam.naiveBits(j) != want) {
                        fp64Wrong++;
                    }
                    if (got[j] != want) {
                        wrong.add(fam.out() + " " + fam.columns().get(j).label() + ": got " + hex(got[j], fam.out()) + ", want " + hex(want, fam.out()));
                    }
                }
            }
        }
        System.out.printf("RoundingCases %s: %d elements, %d of them rounded wrongly by plain fp64%n", families.get(0).out(), elements, fp64Wrong);
        assertEquals(List.of(), wrong, wrong.size() + " of " + elements + " elements are not the correctly rounded W + s·B·A");
        assertTrue(fp64Wrong >= MIN_FP64_WRONG, "only " + fp64Wrong + " of " + elements
                + " elements are rounded wrongly by plain fp64: the cases no longer test the error bound");
    }
}
