package org.loramerge.engine;

import java.math.BigDecimal;
import java.math.MathContext;
import org.loramerge.format.DType;

/**
 * An independent reference for tests: rounds an exact decimal value to BF16/F16/F32 by comparing
 * exact distances to neighbouring candidates (no shared code with the engine's rounding).
 */
public final class ExactReference {
    private ExactReference() {
    }

    /** Bits of the value of {@code dtype} nearest to x, ties to the even bit pattern; overflow to ±Inf. */
    public static int roundBits(BigDecimal x, DType dtype) {
        int expBits = dtype == DType.F16 ? 5 : 8;
        int mantBits = dtype == DType.F16 ? 10 : dtype == DType.BF16 ? 7 : 23;
        int signBit = 1 << (expBits + mantBits);
        int infBits = ((1 << expBits) - 1) << mantBits;
        boolean negative = x.signum() < 0;
        BigDecimal a = x.abs();
        // binary search the largest non-negative pattern whose value is <= a (patterns are monotone in value)
        int lo = 0;
        int hi = infBits; // value(infBits) stands for 2^(emax+1), the first value past the largest finite one
        while (hi - lo > 1) {
            int mid = (lo + hi) >>> 1;
            if (value(mid, expBits, mantBits).compareTo(a) <= 0) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        int pick;
        if (value(lo, expBits, mantBits).compareTo(a) == 0) {
            pick = lo;
        } else {
            BigDecimal dLo = a.subtract(value(lo, expBits, mantBits));
            BigDecimal dHi = value(hi, expBits, mantBits).subtract(a);
            int c = dLo.compareTo(dHi);
            pick = c < 0 ? lo : c > 0 ? hi : ((lo & 1) == 0 ? lo : hi);
        }
        return negative ? pick | signBit : pick;
    }

    /** Exact value of a non-negative bit pattern; the infinity pattern stands for 2^(emax+1). */
    static BigDecimal value(int bits, int expBits, int mantBits) {
        int bias = (1 << (expBits - 1)) - 1;
        int e = bits >>> mantBits;
        int m = bits & ((1 << mantBits) - 1);
        if (e == 0) {
            return new BigDecimal(m).multiply(pow2(1 - bias - mantBits));
        }
        if (e == (1 << expBits) - 1) {
            return pow2(bias + 1);
        }
        return new BigDecimal(m + (1 << mantBits)).multiply(pow2(e - bias - mantBits));
    }

    static BigDecimal pow2(int k) {
        return k >= 0 ? new BigDecimal(java.math.BigInteger.ONE.shiftLeft(k))
                : BigDecimal.ONE.divide(new BigDecimal(java.math.BigInteger.ONE.shiftLeft(-k)), MathContext.UNLIMITED);
    }

    /** The exact value of bits of {@code dtype} (finite only). */
    public static BigDecimal valueOf(int bits, DType dtype) {
        int expBits = dtype == DType.F16 ? 5 : 8;
        int mantBits = dtype == DType.F16 ? 10 : dtype == DType.BF16 ? 7 : 23;
        int signBit = 1 << (expBits + mantBits);
        BigDecimal v = value(bits & (signBit - 1), expBits, mantBits);
        return (bits & signBit) != 0 ? v.negate() : v;
    }
}
