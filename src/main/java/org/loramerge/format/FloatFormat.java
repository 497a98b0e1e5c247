package org.loramerge.format;

import java.nio.ByteBuffer;

/**
 * The three floating-point formats the merge computes with, and exact conversions between their
 * bits and {@code double}. Every F16, BF16 and F32 value is exactly a double, so decoding never
 * rounds; {@link #round(double)} rounds a double once, to nearest with ties to even, straight into
 * the format (never through float first, which would round twice).
 */
public enum FloatFormat {
    BF16(DType.BF16, 8, -126, 127),
    F16(DType.F16, 11, -14, 15),
    F32(DType.F32, 24, -126, 127);

    private final DType dtype;
    /** Precision in bits, the hidden bit included. */
    private final int precision;
    /** Exponent of the smallest normal number. */
    private final int minExponent;
    private final double maxFinite;
    private final double[] quantum;
    private final double[] inverseQuantum;
    /** Bits of a double's fraction below this format's last fraction bit. */
    private final int dropped;
    /** Biased exponent field of a double whose value is 2^minExponent, and of 2^maxExponent. */
    private final int minBiased;
    private final int maxBiased;
    /** This format's exponent bias, and where its sign bit is. */
    private final int bias;
    private final int signShift;

    FloatFormat(DType dtype, int precision, int minExponent, int maxExponent) {
        this.dtype = dtype;
        this.precision = precision;
        this.minExponent = minExponent;
        this.maxFinite = (2 - Math.scalb(1.0, 1 - precision)) * Math.scalb(1.0, maxExponent);
        this.dropped = 53 - precision;
        this.minBiased = minExponent + 1023;
        this.maxBiased = maxExponent + 1023;
        this.bias = maxExponent;
        this.signShift = dtype.bits() - 1;
        this.quantum = new double[maxExponent - minExponent + 1];
        this.inverseQuantum = new double[quantum.length];
        for (int e = minExponent; e <= maxExponent; e++) {
            quantum[e - minExponent] = Math.scalb(1.0, e - precision + 1);
            inverseQuantum[e - minExponent] = Math.scalb(1.0, precision - 1 - e);
        }
    }

    public static FloatFormat of(DType dtype) {
        switch (dtype) {
            case BF16: return BF16;
            case F16: return F16;
            case F32: return F32;
            default: throw new IllegalArgumentException(dtype + " is not a floating-point format the merge computes with");
        }
    }

    public DType dtype() {
        return dtype;
    }

    /** Significand bits, the hidden bit included (24 for F32, 11 for F16, 8 for BF16). */
    public int precision() {
        return precision;
    }

    public int sizeInBytes() {
        return dtype.sizeInBytes();
    }

    public double maxFinite() {
        return maxFinite;
    }

    /**
     * Rounds {@code x} to the nearest value of this format, ties to even; values beyond the largest
     * finite one round to infinity as IEEE 754 says. NaN and infinities are returned as they are.
     */
    public double round(double x) {
        if (x == 0 || !Double.isFinite(x)) {
            return x;
        }
        if (this == F32) {
            return (float) x; // Java's double-to-float conversion is IEEE round-to-nearest-even
        }
        int e = Math.getExponent(x);
        if (e < minExponent) {
            e = minExponent; // subnormal range: a fixed quantum
        }
        if (e - minExponent >= quantum.length) {
            return x > 0 ? Double.POSITIVE_INFINITY : Double.NEGATIVE_INFINITY;
        }
        double q = quantum[e - minExponent];
        // both products are exact: they scale by powers of two that keep the values normal
        double y = Math.rint(x * inverseQuantum[e - minExponent]) * q;
        if (Math.abs(y) > maxFinite) {
            return y > 0 ? Double.POSITIVE_INFINITY : Double.NEGATIVE_INFINITY;
        }
        if (y == 0) {
            return Math.copySign(0.0, x);
        }
        return y;
    }

    /**
     * The bits of {@code x} rounded to this format when every value within {@code err} of it rounds
     * the same way, else -1: the fast path of the merge. It works on the double's bits: the dropped
     * fraction bits say how far x lies from the rounding midpoint, exactly. It answers only for x in
     * this format's normal range and for err under a quarter of the format's spacing there (so that
     * no other rounding boundary is in reach); otherwise -1, and the caller decides the slow way.
     */
    public long roundIfDecided(double x, double err) {
        long bits = Double.doubleToRawLongBits(x);
        int biased = (int) (bits >>> 52) & 0x7FF;
        if (biased < minBiased || biased > maxBiased) {
            return -1; // zero, subnormal in this format, beyond its range, NaN or infinity
        }
        long half = 1L << (dropped - 1);
        long below = bits & ((1L << dropped) - 1);
        // units of the double's last place at x: 2^(biased - 1023 - 52), exact
        double unit = Double.longBitsToDouble((long) (biased - 52) << 52);
        double distance = Math.abs(below - half) * unit;
        if (!(distance > err) || !(err < half * unit * 0.5)) {
            return -1;
        }
        long rounded = bits + (half - 1) + ((bits >>> dropped) & 1); // to nearest, ties to even; carries into the exponent
        long sign = rounded >>> 63;
        long exponent = ((rounded >>> 52) & 0x7FF) - 1023 + bias; // 2·bias + 1 (all ones, fraction 0) when it overflowed: ±Inf
        long fraction = (rounded >>> dropped) & ((1L << (precision - 1)) - 1);
        return (sign << signShift) | (exponent << (precision - 1)) | fraction;
    }

    /** The bits of {@code value}, which must be exactly representable in this format (or NaN/Inf). */
    public int encode(double value) {
        switch (this) {
            case BF16: {
                if (Double.isNaN(value)) {
                    return 0x7FC0;
                }
                return Float.floatToRawIntBits((float) value) >>> 16;
            }
            case F16:
                return float16Bits((float) value);
            default:
                if (Double.isNaN(value)) {
                    return 0x7FC00000;
                }
                return Float.floatToRawIntBits((float) value);
        }
    }

    /** The canonical quiet NaN of this format. */
    public int nanBits() {
        switch (this) {
            case BF16: return 0x7FC0;
            case F16: return 0x7E00;
            default: return 0x7FC00000;
        }
    }

    /** The value of {@code bits} in this format, exactly. */
    public double decode(int bits) {
        switch (this) {
            case BF16: return Float.intBitsToFloat((bits & 0xFFFF) << 16);
            case F16: return F16_TABLE[bits & 0xFFFF];
            default: return Float.intBitsToFloat(bits);
        }
    }

    /** True if {@code bits} encode NaN or an infinity. */
    public boolean isNonFinite(int bits) {
        switch (this) {
            case BF16: return (bits & 0x7F80) == 0x7F80;
            case F16: return (bits & 0x7C00) == 0x7C00;
            default: return (bits & 0x7F800000) == 0x7F800000;
        }
    }

    /** Reads element {@code index} (an element index, not a byte offset) of a little-endian buffer. */
    public int bitsAt(ByteBuffer b, long index) {
        if (this == F32) {
            return b.getInt(Math.toIntExact(index * 4));
        }
        return b.getShort(Math.toIntExact(index * 2)) & 0xFFFF;
    }

    /** Writes element {@code index} of a little-endian buffer. */
    public void putBits(ByteBuffer b, long index, int bits) {
        if (this == F32) {
            b.putInt(Math.toIntExact(index * 4), bits);
        } else {
            b.putShort(Math.toIntExact(index * 2), (short) bits);
        }
    }

    /** One unit in the last place of this format at {@code x} (the quantum of x's binade). */
    public double ulp(double x) {
        if (!Double.isFinite(x)) {
            return Double.NaN;
        }
        int e = x == 0 ? minExponent : Math.max(Math.getExponent(x), minExponent);
        if (e - minExponent >= quantum.length) {
            e = minExponent + quantum.length - 1;
        }
        return quantum[e - minExponent];
    }

    /** The smallest positive value of this format (a subnormal). */
    public double minValue() {
        return quantum[0];
    }

    /** The next value of this format above {@code y}, a value of it (+Inf after the largest finite one). */
    public double nextUp(double y) {
        if (y == 0) {
            return minValue();
        }
        if (y == Double.POSITIVE_INFINITY) {
            return y;
        }
        int bits = encode(y);
        return decode(y > 0 ? bits + 1 : bits - 1);
    }

    /** The next value of this format below {@code y}, a value of it (−Inf after the most negative finite one). */
    public double nextDown(double y) {
        return -nextUp(-y);
    }

    /**
     * The rounding boundary between adjacent values {@code a < b} of this format: their midpoint,
     * exact in double (these formats have at most 24 bits); between the largest finite value and
     * infinity, the overflow threshold (the midpoint to 2^(maxExponent+1)).
     */
    public double midpoint(double a, double b) {
        if (b == Double.POSITIVE_INFINITY) {
            return a + 0.5 * ulp(a);
        }
        if (a == Double.NEGATIVE_INFINITY) {
            return b - 0.5 * ulp(b);
        }
        return 0.5 * a + 0.5 * b;
    }

    /** Of two adjacent values, the one with an even last bit: where a tie between them rounds. */
    public double evenOf(double a, double b) {
        return (encode(a) & 1) == 0 ? a : b;
    }

    private static final double[] F16_TABLE = new double[65536];

    static {
        for (int h = 0; h < 65536; h++) {
            F16_TABLE[h] = float16Value(h);
        }
    }

    private static double float16Value(int h) {
        int sign = (h >>> 15) & 1;
        int exp = (h >>> 10) & 0x1F;
        int mant = h & 0x3FF;
        double v;
        if (exp == 0) {
            v = Math.scalb((double) mant, -24);
        } else if (exp == 31) {
            v = mant == 0 ? Double.POSITIVE_INFINITY : Double.NaN;
        } else {
            v = Math.scalb((double) (mant | 0x400), exp - 25);
        }
        return sign == 1 ? -v : v;
    }

    private static int float16Bits(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 16) & 0x8000;
        if (Float.isNaN(f)) {
            return 0x7E00;
        }
        float a = Math.abs(f);
        if (Float.isInfinite(a)) {
            return sign | 0x7C00;
        }
        if (a == 0) {
            return sign;
        }
        int e = Math.getExponent(a);
        if (e < -14) {
            // subnormal: an exact multiple of 2^-24
            return sign | Math.round(Math.scalb(a, 24));
        }
        int mant = Math.round(Math.scalb(a, 10 - e)) - 0x400;
        return sign | ((e + 15) << 10) | mant;
    }
}
