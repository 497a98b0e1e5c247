/*
 * Rounding a double to BF16, F16 and F32, and the per-element merge decision.
 *
 * Shared by the kernels (nvcc) and by kernels/test/round_ref.c (gcc), so the code tested
 * on the CPU is the code that runs on the GPU. Only integer, bit and exact power-of-two
 * arithmetic plus rint(): no bf16/f16 conversion intrinsic, whose rounding we could not
 * control, and never double -> float -> bf16 (that rounds twice).
 *
 * Rounding to a format with precision p (hidden bit included) and minimum normal
 * exponent emin, round to nearest, ties to even:
 *   e = max(floor(log2|x|), emin),  q = 2^(e-p+1),  y = rint(x / q) * q
 * x / q and the product are exact (scaling by a power of two that stays normal), and
 * rint() rounds half to even, so y is the correctly rounded value; |y| > max -> +-Inf.
 *   BF16: p = 8,  emin = -126, max = (2 - 2^-7)  * 2^127
 *   F16:  p = 11, emin = -14,  max = 65504
 *   F32:  p = 24, emin = -126, max = (2 - 2^-23) * 2^127
 * The sign of zero is kept (rint(-0.3) is -0.0).
 */
#ifndef LORAMERGE_ROUNDING_CUH
#define LORAMERGE_ROUNDING_CUH

#ifdef __CUDACC__
#define LM_FN __host__ __device__ __forceinline__
#else
#define LM_FN static inline
#include <string.h>
#endif
#include <math.h>
#include <stdint.h>

/* Target formats, as safetensors spells them. */
#define LM_BF16 0
#define LM_F16 1
#define LM_F32 2

/* What lm_round_element decided; the round kernels count the last three. */
#define LM_ELEM_ROUNDED 0   /* round(v), certainly the correctly rounded exact value */
#define LM_ELEM_KEPT 1      /* the original W was NaN or Inf: its bits, unchanged */
#define LM_ELEM_AMBIGUOUS 2 /* round(v) written; the host must recompute it exactly */
#define LM_ELEM_OVERFLOW 3  /* +-Inf from a finite W */
#define LM_ELEM_NAN 4       /* canonical quiet NaN from a finite W */

LM_FN uint64_t lm_bits_of_double(double x) {
#ifdef __CUDA_ARCH__
    return (uint64_t)__double_as_longlong(x);
#else
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

LM_FN double lm_double_of_bits(uint64_t u) {
#ifdef __CUDA_ARCH__
    return __longlong_as_double((long long)u);
#else
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

LM_FN uint32_t lm_bits_of_float(float x) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

LM_FN float lm_float_of_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* 2^k, exactly, for -1022 <= k <= 1023. */
LM_FN double lm_pow2(int k) {
    return lm_double_of_bits((uint64_t)(k + 1023) << 52);
}

/* floor(log2|x|) for a normal double; -1023 for zero and subnormals; 1024 for Inf, NaN. */
LM_FN int lm_exponent(double x) {
    return (int)((lm_bits_of_double(x) >> 52) & 0x7ff) - 1023;
}

/* The next double towards -Inf (Java's Math.nextDown); -Inf and NaN are returned as is. */
LM_FN double lm_next_down(double x) {
    uint64_t u = lm_bits_of_double(x);
    if (x != x || u == 0xfff0000000000000ull) {
        return x;
    }
    if (x == 0.0) {
        return lm_double_of_bits(0x8000000000000001ull); /* -0 and +0 alike */
    }
    return lm_double_of_bits(x > 0.0 ? u - 1 : u + 1);
}

/* The next double towards +Inf (Java's Math.nextUp). */
LM_FN double lm_next_up(double x) {
    return -lm_next_down(-x);
}

/*
 * x rounded to nearest-even in a format of precision p, minimum normal exponent emin and
 * largest finite value maxFinite; +-Inf when the rounded value exceeds maxFinite.
 * Infinite x is returned as is; NaN x gives NaN.
 */
LM_FN double lm_round_to(double x, int p, int emin, double maxFinite) {
    int e = lm_exponent(x);
    if (e == 1024) {
        return x;
    }
    if (e < emin) {
        e = emin; /* zero, the target's subnormals, and double subnormals */
    }
    /* e - p + 1 >= -149 and p - 1 - e >= -1016: both powers are normal doubles. */
    double y = rint(x * lm_pow2(p - 1 - e)) * lm_pow2(e - p + 1);
    if (fabs(y) > maxFinite) {
        y = copysign(lm_double_of_bits(0x7ff0000000000000ull), x);
    }
    return y;
}

#define LM_BF16_MAX 0x1.fep127
#define LM_F16_MAX 65504.0
#define LM_F32_MAX 0x1.fffffep127

/* BF16 bits of x, correctly rounded. y is exactly a float, so (float)y is exact. */
LM_FN uint32_t lm_round_bf16(double x) {
    if (x != x) {
        return 0x7fc0u;
    }
    double y = lm_round_to(x, 8, -126, LM_BF16_MAX);
    return lm_bits_of_float((float)y) >> 16;
}

/* F16 bits of x, correctly rounded; the value is encoded by hand, exactly. */
LM_FN uint32_t lm_round_f16(double x) {
    if (x != x) {
        return 0x7e00u;
    }
    double y = lm_round_to(x, 11, -14, LM_F16_MAX);
    uint32_t sign = (uint32_t)(lm_bits_of_double(y) >> 48) & 0x8000u;
    double a = fabs(y);
    if (a > LM_F16_MAX) {
        return sign | 0x7c00u;
    }
    if (a < 0x1p-14) {
        return sign | (uint32_t)(a * 0x1p24); /* subnormal or zero: an integer 0..1023 */
    }
    int e = lm_exponent(a); /* -14..15 */
    uint32_t mantissa = (uint32_t)(a * lm_pow2(10 - e)) - 1024u;
    return sign | ((uint32_t)(e + 15) << 10) | mantissa;
}

/* F32 bits of x, correctly rounded (the same arithmetic; (float)y is then exact). */
LM_FN uint32_t lm_round_f32(double x) {
    if (x != x) {
        return 0x7fc00000u;
    }
    double y = lm_round_to(x, 24, -126, LM_F32_MAX);
    return lm_bits_of_float((float)y);
}

LM_FN uint32_t lm_round_bits(double x, int fmt) {
    return fmt == LM_BF16 ? lm_round_bf16(x) : fmt == LM_F16 ? lm_round_f16(x) : lm_round_f32(x);
}

LM_FN int lm_bits_nonfinite(uint32_t bits, int fmt) {
    return fmt == LM_BF16  ? (bits & 0x7f80u) == 0x7f80u
           : fmt == LM_F16 ? (bits & 0x7c00u) == 0x7c00u
                           : (bits & 0x7f800000u) == 0x7f800000u;
}

LM_FN int lm_bits_nan(uint32_t bits, int fmt) {
    return fmt == LM_BF16  ? (bits & 0x7fffu) > 0x7f80u
           : fmt == LM_F16 ? (bits & 0x7fffu) > 0x7c00u
                           : (bits & 0x7fffffffu) > 0x7f800000u;
}

LM_FN uint32_t lm_qnan_bits(int fmt) {
    return fmt == LM_BF16 ? 0x7fc0u : fmt == LM_F16 ? 0x7e00u : 0x7fc00000u;
}

LM_FN uint32_t lm_inf_bits(int fmt, int negative) {
    uint32_t bits = fmt == LM_BF16 ? 0x7f80u : fmt == LM_F16 ? 0x7c00u : 0x7f800000u;
    uint32_t sign = fmt == LM_F32 ? 0x80000000u : 0x8000u;
    return negative ? bits | sign : bits;
}

/* Widening is exact. NaN payloads are not kept: the merge keeps the original bits. */
LM_FN double lm_widen_bf16(uint32_t bits) {
    return (double)lm_float_of_bits(bits << 16);
}

LM_FN double lm_widen_f16(uint32_t bits) {
    uint32_t exponent = (bits >> 10) & 0x1fu;
    uint32_t mantissa = bits & 0x3ffu;
    double a;
    if (exponent == 0) {
        a = (double)mantissa * 0x1p-24;
    } else if (exponent == 31) {
        a = lm_double_of_bits(mantissa != 0 ? 0x7ff8000000000000ull : 0x7ff0000000000000ull);
    } else {
        a = (double)(mantissa | 0x400u) * lm_pow2((int)exponent - 25);
    }
    return (bits & 0x8000u) != 0 ? -a : a;
}

LM_FN double lm_widen_f32(uint32_t bits) {
    return (double)lm_float_of_bits(bits);
}

/*
 * The error bound of a merged value v = W + s * sum_k U[i,k] V[j,k] computed in fp64:
 *   e = K * (|v| + 2 * absScale * nUi * nVj) + relRowI * |v| + relColJ * |v|
 * with K = (r + 8) * 2^-52, nUi, nVj the L2 norms of row i of U and row j of V, and
 * relRowI, relColJ extra relative terms (0 when unused; DoRA's rescaling, see README).
 */
LM_FN double lm_error_bound(double v, double K, double absScale, double nUi, double nVj,
                            double relRowI, double relColJ) {
    double av = fabs(v);
    return K * (av + 2.0 * absScale * nUi * nVj) + relRowI * av + relColJ * av;
}

/*
 * The output bits of one element and what happened (LM_ELEM_*).
 *   v: the merged fp64 value; e: its error bound (>= 0; Inf or NaN when the inputs are);
 *   wOrigBits: the original W element in the target format.
 * Unambiguous means round(lo) == round(hi) with lo = nextDown(v - e), hi = nextUp(v + e)
 * (v - e and v + e computed in fp64, round to nearest): lo <= v - e and hi >= v + e hold
 * exactly, the exact value lies in between, and rounding is monotone, so it rounds to
 * the same bits. (Without the one-step widening a v + e that rounds down onto a tie
 * would pass, although values just above the tie round up.) A zero whose sign the bound
 * cannot settle (lo rounds to -0, hi to +0) is ambiguous too. When e == 0 and v == 0
 * the delta is exactly zero and W (a zero) is kept with its sign.
 * Overflow and NaN are reported only for unambiguous elements; the host decides the
 * ambiguous ones.
 */
LM_FN int lm_round_element(double v, double e, uint32_t wOrigBits, int fmt, uint32_t *out) {
    if (lm_bits_nonfinite(wOrigBits, fmt)) {
        *out = wOrigBits;
        return LM_ELEM_KEPT;
    }
    if (v != v) {
        *out = lm_qnan_bits(fmt);
        return LM_ELEM_NAN;
    }
    if (lm_exponent(v) == 1024) {
        *out = lm_inf_bits(fmt, v < 0);
        return LM_ELEM_OVERFLOW;
    }
    if (v == 0.0 && e == 0.0) {
        *out = wOrigBits;
        return LM_ELEM_ROUNDED;
    }
    if (e <= 0x1.fffffffffffffp1023) { /* false for Inf and NaN */
        uint32_t low = lm_round_bits(lm_next_down(v - e), fmt);
        uint32_t high = lm_round_bits(lm_next_up(v + e), fmt);
        if (low == high) {
            *out = low;
            return lm_bits_nonfinite(low, fmt) ? LM_ELEM_OVERFLOW : LM_ELEM_ROUNDED;
        }
    }
    *out = lm_round_bits(v, fmt);
    return LM_ELEM_AMBIGUOUS;
}

#endif /* LORAMERGE_ROUNDING_CUH */
