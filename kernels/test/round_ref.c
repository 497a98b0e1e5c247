/*
 * Tests kernels/rounding.cuh, the exact code the round and widen kernels run, compiled
 * here by gcc, against references computed other ways:
 *   ref_integer:  the double's integer significand, shifted with round-half-even by hand
 *                 and packed into the target's fields;
 *   ref_neighbor: BF16/F16 only: the two adjacent representable values found by binary
 *                 search over all bit patterns, then x compared with their midpoint;
 *   ref_float:    F32 only: the host's (float) conversion (SSE, round to nearest even).
 * Cases: every tie between consecutive BF16/F16 values and the doubles just around it,
 * the overflow thresholds, subnormals, signed zero, NaN, random doubles of every
 * exponent, plus the per-element decision (lm_round_element) and the widening.
 *
 * Build and run: see CMakeLists.txt (ctest -R round_ref), or
 *   gcc -std=c11 -O2 -ffp-contract=off -I kernels kernels/test/round_ref.c -lm && ./a.out
 */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rounding.cuh"

static long checks;
static long failures;

static void fail(const char *what, int fmt, double x, uint32_t got, uint32_t want) {
    static const char *const names[] = {"BF16", "F16", "F32"};
    failures++;
    if (failures <= 25) {
        fprintf(stderr, "round_ref: FAILED %s %s x=%a (%.17g): got 0x%" PRIx32 ", want 0x%" PRIx32 "\n",
                what, names[fmt], x, x, got, want);
    }
}

static void expect_bits(const char *what, int fmt, double x, uint32_t got, uint32_t want) {
    checks++;
    if (got != want) {
        fail(what, fmt, x, got, want);
    }
}

/* ---- the format parameters, written out again independently of rounding.cuh ---- */
typedef struct {
    int precision;    /* significand bits, hidden bit included */
    int exponentBits; /* field width */
    int totalBits;
} Format;

static const Format FORMATS[3] = {{8, 8, 16}, {11, 5, 16}, {24, 8, 32}};

static int bias_of(const Format *f) {
    return (1 << (f->exponentBits - 1)) - 1;
}

/* ---- reference 1: integer significand arithmetic ---- */
static uint32_t ref_integer(double x, int fmt) {
    const Format *f = &FORMATS[fmt];
    uint32_t signBit = 1u << (f->totalBits - 1);
    uint32_t expAllOnes = ((1u << f->exponentBits) - 1) << (f->precision - 1);
    if (isnan(x)) {
        return expAllOnes | (1u << (f->precision - 2));
    }
    uint32_t sign = signbit(x) ? signBit : 0;
    if (isinf(x)) {
        return sign | expAllOnes;
    }
    if (x == 0) {
        return sign;
    }
    int exp2;
    double m = frexp(fabs(x), &exp2);              /* |x| = m * 2^exp2, m in [0.5, 1) */
    uint64_t significand = (uint64_t)ldexp(m, 53); /* |x| = significand * 2^(exp2 - 53) */
    int lsbExp = exp2 - 53;
    int emin = 1 - bias_of(f);
    int targetExp = exp2 - 1 < emin ? emin : exp2 - 1;
    int quantumExp = targetExp - f->precision + 1;
    int shift = quantumExp - lsbExp; /* always > 0: a double has more bits */
    uint64_t k;
    if (shift >= 64) {
        k = 0; /* below half the quantum */
    } else {
        k = significand >> shift;
        uint64_t rest = significand & ((1ull << shift) - 1);
        uint64_t half = 1ull << (shift - 1);
        if (rest > half || (rest == half && (k & 1))) {
            k++;
        }
    }
    if (k == 0) {
        return sign;
    }
    if (k == (1ull << f->precision)) { /* rounded up to the next binade */
        k >>= 1;
        quantumExp++;
    }
    uint32_t field, mantissa;
    if (k < (1ull << (f->precision - 1))) { /* subnormal */
        field = 0;
        mantissa = (uint32_t)k;
    } else {
        int biased = quantumExp + f->precision - 1 + bias_of(f);
        if (biased >= (1 << f->exponentBits) - 1) {
            return sign | expAllOnes;
        }
        field = (uint32_t)biased;
        mantissa = (uint32_t)(k - (1ull << (f->precision - 1)));
    }
    return sign | (field << (f->precision - 1)) | mantissa;
}

/* ---- reference 2: neighbours and midpoint (16-bit formats) ---- */
static double value_of16(uint32_t bits, int fmt) {
    const Format *f = &FORMATS[fmt];
    int mbits = f->precision - 1;
    uint32_t field = (bits >> mbits) & ((1u << f->exponentBits) - 1);
    uint32_t mantissa = bits & ((1u << mbits) - 1);
    double a = field == 0 ? ldexp((double)mantissa, 1 - bias_of(f) - mbits)
                          : ldexp((double)(mantissa | (1u << mbits)), (int)field - bias_of(f) - mbits);
    return (bits & 0x8000u) ? -a : a;
}

static uint32_t max_finite16(int fmt) {
    return fmt == LM_BF16 ? 0x7f7fu : 0x7bffu;
}

static uint32_t ref_neighbor(double x, int fmt) {
    if (isnan(x)) {
        return fmt == LM_BF16 ? 0x7fc0u : 0x7e00u;
    }
    uint32_t sign = signbit(x) ? 0x8000u : 0;
    uint32_t infBits = fmt == LM_BF16 ? 0x7f80u : 0x7c00u;
    double a = fabs(x);
    uint32_t top = max_finite16(fmt);
    /* the value one step past the largest finite one: 2^(emax + 1), an even "pattern" */
    double beyond = 2 * value_of16(top & ~((1u << (FORMATS[fmt].precision - 1)) - 1), fmt);
    if (a >= beyond) {
        return sign | infBits;
    }
    uint32_t lo = 0, hi = top; /* largest pattern p with value(p) <= a */
    if (a >= value_of16(top, fmt)) {
        lo = top;
    } else {
        while (hi - lo > 1) {
            uint32_t mid = (lo + hi) / 2;
            if (value_of16(mid, fmt) <= a) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    double below = value_of16(lo, fmt);
    if (below == a) {
        return sign | lo;
    }
    double above = lo == top ? beyond : value_of16(lo + 1, fmt);
    double midpoint = (below + above) / 2; /* exact: few significant bits */
    uint32_t upper = lo == top ? infBits : lo + 1;
    if (a < midpoint) {
        return sign | lo;
    }
    if (a > midpoint) {
        return sign | upper;
    }
    return sign | ((lo & 1) ? upper : lo);
}

/* ---- reference 3: the host's double -> float conversion ---- */
static uint32_t ref_float(double x) {
    if (isnan(x)) {
        return 0x7fc00000u;
    }
    volatile float f = (float)x;
    float g = f;
    uint32_t u;
    memcpy(&u, &g, sizeof u);
    return u;
}

static uint32_t reference(double x, int fmt) {
    return ref_integer(x, fmt);
}

static void check_round(double x, int fmt) {
    uint32_t got = lm_round_bits(x, fmt);
    uint32_t want = ref_integer(x, fmt);
    expect_bits("lm_round_bits vs ref_integer", fmt, x, got, want);
    if (fmt == LM_F32) {
        expect_bits("ref_integer vs ref_float", fmt, x, want, ref_float(x));
    } else {
        expect_bits("ref_integer vs ref_neighbor", fmt, x, want, ref_neighbor(x, fmt));
    }
}

static void check_both_signs(double x, int fmt) {
    check_round(x, fmt);
    check_round(-x, fmt);
}

/* Named cases, each with the answer written out by hand. */
static void check_named(void) {
    struct {
        int fmt;
        double x;
        uint32_t want;
    } cases[] = {
        {LM_BF16, 1.0 + 0x1p-8, 0x3f80},              /* tie -> even (1.0) */
        {LM_BF16, 1.0 + 3 * 0x1p-8, 0x3f82},          /* tie -> even (1 + 2^-6) */
        {LM_BF16, nextafter(1.0 + 0x1p-8, 2), 0x3f81}, /* just above the tie */
        {LM_BF16, nextafter(1.0 + 0x1p-8, 0), 0x3f80}, /* just below the tie */
        {LM_BF16, 0x1.fep127, 0x7f7f},                /* the largest finite */
        {LM_BF16, 0x1.ffp127, 0x7f80},                /* (2 - 2^-8) * 2^127: tie -> Inf */
        {LM_BF16, nextafter(0x1.ffp127, 0), 0x7f7f},  /* just below it */
        {LM_BF16, -0x1.ffp127, 0xff80},
        {LM_BF16, 0x1p-133, 0x0001},                  /* smallest subnormal */
        {LM_BF16, 0x1p-134, 0x0000},                  /* half of it: tie -> even zero */
        {LM_BF16, nextafter(0x1p-134, 1), 0x0001},
        {LM_BF16, 3 * 0x1p-134, 0x0002},              /* 1.5 subnormal ulps: tie -> even */
        {LM_BF16, 0x1.fcp-127, 0x007f},               /* largest subnormal */
        {LM_BF16, 0x1.fdp-127, 0x007f},               /* below the tie with 2^-126 */
        {LM_BF16, 0x1.fep-127, 0x0080},               /* the tie -> the smallest normal (even) */
        {LM_BF16, -0.0, 0x8000},
        {LM_BF16, -0x1p-140, 0x8000},                 /* underflow keeps the sign */
        {LM_BF16, 0x1p-1074, 0x0000},                 /* a double subnormal */
        {LM_BF16, 1e300, 0x7f80},
        {LM_BF16, NAN, 0x7fc0},
        {LM_BF16, INFINITY, 0x7f80},
        {LM_F16, 65504.0, 0x7bff},
        {LM_F16, 65520.0, 0x7c00},                    /* tie past the largest -> Inf */
        {LM_F16, nextafter(65520.0, 0), 0x7bff},
        {LM_F16, 0x1p-24, 0x0001},
        {LM_F16, 0x1p-25, 0x0000},
        {LM_F16, nextafter(0x1p-25, 1), 0x0001},
        {LM_F16, 3 * 0x1p-25, 0x0002},
        {LM_F16, 0x1.ff8p-15, 0x03ff},                /* largest subnormal */
        {LM_F16, 0x1.ffcp-15, 0x0400},                /* tie -> 2^-14 (even) */
        {LM_F16, 1.0 + 0x1p-11, 0x3c00},
        {LM_F16, 1.0 + 3 * 0x1p-11, 0x3c02},
        {LM_F16, -0.0, 0x8000},
        {LM_F16, NAN, 0x7e00},
        {LM_F32, 0x1.fffffep127, 0x7f7fffff},
        {LM_F32, 0x1.ffffffp127, 0x7f800000},          /* tie past the largest -> Inf */
        {LM_F32, 0x1p-149, 0x00000001},
        {LM_F32, 0x1p-150, 0x00000000},
        {LM_F32, 1.0 + 0x1p-24, 0x3f800000},
        {LM_F32, -0.0, 0x80000000},
        {LM_F32, NAN, 0x7fc00000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_bits("named case", cases[i].fmt, cases[i].x, lm_round_bits(cases[i].x, cases[i].fmt),
                    cases[i].want);
        check_round(cases[i].x, cases[i].fmt);
    }
}

/* Every BF16/F16 value, every tie between neighbours, and the doubles around them. */
static void check_all_ties16(int fmt) {
    uint32_t top = max_finite16(fmt);
    for (uint32_t p = 0; p <= top; p++) {
        double a = value_of16(p, fmt);
        double b = p == top ? 2 * value_of16(top & ~((1u << (FORMATS[fmt].precision - 1)) - 1), fmt)
                            : value_of16(p + 1, fmt);
        double mid = (a + b) / 2;
        double probes[] = {a,
                           mid,
                           nextafter(mid, 0),
                           nextafter(mid, INFINITY),
                           nextafter(nextafter(mid, 0), 0),
                           nextafter(nextafter(mid, INFINITY), INFINITY),
                           a + (b - a) / 4,
                           a + 3 * (b - a) / 4,
                           nextafter(a, INFINITY),
                           nextafter(b, 0)};
        for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
            check_both_signs(probes[k], fmt);
        }
        /* round trip of every finite value, through the widening too */
        double w = fmt == LM_BF16 ? lm_widen_bf16(p) : lm_widen_f16(p);
        checks++;
        if (w != a) {
            fail("widen vs value_of16", fmt, a, (uint32_t)p, (uint32_t)p);
        }
        expect_bits("round(widen(p)) == p", fmt, w, lm_round_bits(w, fmt), p);
        expect_bits("round(widen(-p)) == -p", fmt, -w,
                    lm_round_bits(fmt == LM_BF16 ? lm_widen_bf16(p | 0x8000u) : lm_widen_f16(p | 0x8000u), fmt),
                    p | 0x8000u);
    }
}

/* F32: ties around random values and every binade's edges. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t next_random(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double float_value(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return (double)f;
}

static void check_ties_f32(void) {
    for (int i = 0; i < 2000000; i++) {
        uint32_t p = (uint32_t)next_random() & 0x7fffffffu;
        if (i < 512) {
            p = (uint32_t)i; /* the smallest subnormals */
        } else if (i < 1024) {
            p = 0x7f7fffffu - (uint32_t)(i - 512); /* the largest finite values */
        } else if (i < 1024 + 254) {
            p = (uint32_t)(i - 1024 + 1) << 23; /* each binade's first value */
        }
        if (p > 0x7f7fffffu) {
            continue;
        }
        double a = float_value(p);
        double b = p == 0x7f7fffffu ? 0x1p128 : float_value(p + 1);
        double mid = (a + b) / 2;
        check_both_signs(a, LM_F32);
        check_both_signs(mid, LM_F32);
        check_both_signs(nextafter(mid, 0), LM_F32);
        check_both_signs(nextafter(mid, INFINITY), LM_F32);
        expect_bits("widen F32", LM_F32, a, lm_round_bits(lm_widen_f32(p), LM_F32), p);
    }
}

/* Random doubles of every exponent: overflow, underflow, double subnormals. */
static void check_random_doubles(void) {
    for (int i = 0; i < 3000000; i++) {
        uint64_t u = next_random();
        double x;
        memcpy(&x, &u, sizeof x);
        if (i % 3 == 1) { /* concentrate on the targets' ranges */
            x = ldexp((double)(u >> 11) / 0x1p53, (int)(next_random() % 300) - 170);
            x = (u & 1) ? -x : x;
        }
        for (int fmt = 0; fmt < 3; fmt++) {
            check_round(x, fmt);
        }
    }
}

static void expect_element(const char *what, double v, double e, uint32_t w, int fmt,
                           int wantWhat, uint32_t wantBits) {
    uint32_t bits = 0xdeadu;
    int gotWhat = lm_round_element(v, e, w, fmt, &bits);
    checks++;
    if (gotWhat != wantWhat || bits != wantBits) {
        failures++;
        fprintf(stderr, "round_ref: FAILED element %s: v=%a e=%a: got (%d, 0x%" PRIx32 "), want (%d, 0x%" PRIx32 ")\n",
                what, v, e, gotWhat, bits, wantWhat, wantBits);
    }
}

static void check_elements(void) {
    double tie = 1.0 + 0x1p-8; /* BF16 tie between 0x3f80 and 0x3f81 */
    expect_element("on a tie with e > 0", tie, 0x1p-50, 0x3f80, LM_BF16, LM_ELEM_AMBIGUOUS, 0x3f80);
    expect_element("near a tie, inside e", nextafter(tie, 2), 0x1p-50, 0x3f80, LM_BF16, LM_ELEM_AMBIGUOUS, 0x3f81);
    expect_element("clear of ties", 1.0 + 0x1p-9, 0x1p-50, 0x3f80, LM_BF16, LM_ELEM_ROUNDED, 0x3f80);
    /* [v - e, v + e] ends exactly on the tie: all of it rounds to 0x3f80, but the check
       widens by one double step, so it is (conservatively) ambiguous. */
    expect_element("e reaching a tie exactly", tie - 0x1p-50, 0x1p-50, 0x3f80, LM_BF16,
                   LM_ELEM_AMBIGUOUS, 0x3f80);
    expect_element("zero of unsettled sign", 0x1p-300, 0x1p-299, 0x0000, LM_BF16, LM_ELEM_AMBIGUOUS, 0x0000);
    expect_element("-0 W, zero delta", 0.0, 0.0, 0x8000, LM_BF16, LM_ELEM_ROUNDED, 0x8000);
    expect_element("+0 W, zero delta", -0.0, 0.0, 0x0000, LM_F16, LM_ELEM_ROUNDED, 0x0000);
    expect_element("tiny negative", -0x1p-200, 0x1p-250, 0x0000, LM_BF16, LM_ELEM_ROUNDED, 0x8000);
    expect_element("W NaN kept", 1.0, 0.0, 0x7fc1, LM_BF16, LM_ELEM_KEPT, 0x7fc1);
    expect_element("W -Inf kept", 1.0, 0.0, 0xfc00, LM_F16, LM_ELEM_KEPT, 0xfc00);
    expect_element("W sNaN F32 kept", 1.0, 0.0, 0x7f800001u, LM_F32, LM_ELEM_KEPT, 0x7f800001u);
    expect_element("v NaN", NAN, NAN, 0x3f80, LM_BF16, LM_ELEM_NAN, 0x7fc0);
    expect_element("v NaN F16", -NAN, 0.0, 0x3c00, LM_F16, LM_ELEM_NAN, 0x7e00);
    expect_element("v NaN F32", NAN, 0.0, 0x3f800000u, LM_F32, LM_ELEM_NAN, 0x7fc00000u);
    expect_element("v -Inf", -INFINITY, INFINITY, 0x3f80, LM_BF16, LM_ELEM_OVERFLOW, 0xff80);
    expect_element("overflow, clear", 3.5e38, 1e20, 0x7f7f, LM_BF16, LM_ELEM_OVERFLOW, 0x7f80);
    expect_element("overflow, F16", -70000.0, 1e-6, 0xfbff, LM_F16, LM_ELEM_OVERFLOW, 0xfc00);
    expect_element("overflow threshold straddled", 0x1.ffp127, 0x1p100, 0x7f7f, LM_BF16, LM_ELEM_AMBIGUOUS, 0x7f80);
    expect_element("65520 straddled", 65520.0, 1e-9, 0x7bff, LM_F16, LM_ELEM_AMBIGUOUS, 0x7c00);
    expect_element("e NaN", 1.0, NAN, 0x3f80, LM_BF16, LM_ELEM_AMBIGUOUS, 0x3f80);
    expect_element("e Inf", 1.0, INFINITY, 0x3f80, LM_BF16, LM_ELEM_AMBIGUOUS, 0x3f80);
    expect_element("F32 clear", 1.0 + 0x1p-30, 0x1p-48, 0x3f800000u, LM_F32, LM_ELEM_ROUNDED, 0x3f800000u);
    /* e far below v's double ulp: v - e and v + e both round to v, the tie itself; values
       just above the tie round up, so this must not pass as settled. */
    expect_element("F32 tie, e below an ulp of v", 1.0 + 0x1p-24, 0x1p-60, 0x3f800000u, LM_F32,
                   LM_ELEM_AMBIGUOUS, 0x3f800000u);
    expect_element("BF16 tie, e below an ulp of v", tie, 0x1p-70, 0x3f80, LM_BF16, LM_ELEM_AMBIGUOUS, 0x3f80);
    expect_element("BF16 value, e below an ulp of v", 1.0, 0x1p-70, 0x3f80, LM_BF16, LM_ELEM_ROUNDED, 0x3f80);

    /* The bound's formula, evaluated as documented. */
    checks++;
    double K = (16 + 8) * 0x1p-52;
    double want = K * (2.0 + 2.0 * 0.5 * 3.0 * 4.0) + 0.25 * 2.0 + 0.125 * 2.0;
    if (lm_error_bound(-2.0, K, 0.5, 3.0, 4.0, 0.25, 0.125) != want) {
        failures++;
        fprintf(stderr, "round_ref: FAILED lm_error_bound\n");
    }

    /* Random, against the exact rounding intervals: the bits t are the rounding of every
       x with m1 <= x <= m2 (ends included when t is even), where m1, m2 are the midpoints
       to t's neighbours. A ROUNDED element needs [v - e, v + e] inside that, an AMBIGUOUS
       one an end of it within e (plus the two-ulp widening) of v. v > 0 (rounding is odd
       symmetric) and away from overflow; v - m1 and m2 - v are exact (Sterbenz). */
    for (int i = 0; i < 3000000; i++) {
        int fmt = i % 3;
        double v = ldexp((double)(next_random() >> 11) / 0x1p53 + 0.5, (int)(next_random() % 35) - 20);
        double e = v * ldexp((double)(next_random() >> 11) / 0x1p53 + 0.5, -(int)(next_random() % 70) - 4);
        if (i % 4 == 0) { /* onto a tie, or a few doubles off it */
            uint32_t t0 = reference(v, fmt);
            double tie = fmt == LM_F32 ? (float_value(t0) + float_value(t0 + 1)) / 2
                                       : (value_of16(t0, fmt) + value_of16(t0 + 1, fmt)) / 2;
            v = tie;
            for (int k = (int)(next_random() % 5) - 2; k != 0; k += k > 0 ? -1 : 1) {
                v = nextafter(v, k > 0 ? INFINITY : 0);
            }
        }
        uint32_t bits;
        int what = lm_round_element(v, e, 0, fmt, &bits);
        uint32_t t = reference(v, fmt);
        double vt, vBelow, vAbove;
        if (fmt == LM_F32) {
            vt = float_value(t), vBelow = float_value(t - 1), vAbove = float_value(t + 1);
        } else {
            vt = value_of16(t, fmt), vBelow = value_of16(t - 1, fmt), vAbove = value_of16(t + 1, fmt);
        }
        double m1 = (vBelow + vt) / 2, m2 = (vt + vAbove) / 2;
        double down = v - m1, up = m2 - v; /* exact */
        int even = (t & 1) == 0;
        int inside = (even ? down >= e : down > e) && (even ? up >= e : up > e);
        double slack = e + 2 * (nextafter(v, INFINITY) - v);
        checks++;
        if (bits != t) {
            fail("random element bits", fmt, v, bits, t);
        } else if (what == LM_ELEM_ROUNDED && !inside) {
            fail("random ROUNDED element not settled", fmt, v, bits, t);
        } else if (what == LM_ELEM_AMBIGUOUS && !(down <= slack || up <= slack)) {
            fail("random AMBIGUOUS element far from a tie", fmt, v, bits, t);
        } else if (what != LM_ELEM_ROUNDED && what != LM_ELEM_AMBIGUOUS) {
            fail("random element class", fmt, v, (uint32_t)what, LM_ELEM_ROUNDED);
        }
    }
}

int main(void) {
    check_named();
    check_all_ties16(LM_BF16);
    check_all_ties16(LM_F16);
    check_ties_f32();
    check_random_doubles();
    check_elements();
    printf("round_ref: %ld passed, %ld failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
