/*
 * Exact rounding of a merged element whose fp64 value the error bound cannot settle: the value
 * W + s * sum_k U[i,k] * V[j,k] held exactly as a nonoverlapping expansion of doubles (Shewchuk,
 * "Adaptive Precision Floating-Point Arithmetic and Fast Robust Geometric Predicates", 1997),
 * built with error-free transformations (TwoSum; TwoProduct by fma), then rounded once by
 * comparing it exactly with the rounding boundaries next to its estimate. The same algorithm,
 * step for step, as src/main/java/org/loramerge/engine/Expansion.java; GPU and CPU bytes agree.
 *
 * Exact while every addend lies in (2^-900, 2^900) and the expansion fits LM_EXP_CAP components
 * (for F32/F16/BF16 factors it holds a handful); otherwise lm_exp.ok turns 0 and the host takes
 * the element (decimal arithmetic, ExactMath). No expression here is contracted into an fma but
 * the explicit ones: TwoSum has no product, and each product's error is taken by fma itself.
 */
#ifndef LORAMERGE_EXACT_CUH
#define LORAMERGE_EXACT_CUH

#include "rounding.cuh"

#define LM_EXP_CAP 40
#define LM_EXP_TINY 0x1p-900
#define LM_EXP_HUGE 0x1p900

typedef struct {
    double c[LM_EXP_CAP]; /* increasing magnitude, nonoverlapping, no zeros */
    int n;
    int ok;
} lm_expansion;

LM_FN void lm_exp_clear(lm_expansion *x) {
    x->n = 0;
    x->ok = 1;
}

/* x += v exactly (grow-expansion with zero elimination). */
LM_FN void lm_exp_add(lm_expansion *x, double v) {
    if (v == 0.0) {
        return;
    }
    if (!(fabs(v) < LM_EXP_HUGE)) {
        x->ok = 0;
        return;
    }
    double q = v;
    int m = 0;
    for (int i = 0; i < x->n; i++) {
        double e = x->c[i];
        double s = q + e;
        double bv = s - q;
        double err = (q - (s - bv)) + (e - bv);
        q = s;
        if (err != 0.0) {
            x->c[m++] = err;
        }
    }
    if (q != 0.0) {
        if (m == LM_EXP_CAP) {
            x->ok = 0;
            return;
        }
        x->c[m++] = q;
    }
    x->n = m;
}

LM_FN int lm_exp_in_range(double v) {
    double m = fabs(v);
    return m > LM_EXP_TINY && m < LM_EXP_HUGE;
}

/* x += s * a * b exactly: two TwoProducts, four addends. */
LM_FN void lm_exp_add_scaled_product(lm_expansion *x, double s, double a, double b) {
    if (a == 0.0 || b == 0.0 || s == 0.0) {
        return;
    }
    double p = a * b;
    double pe = fma(a, b, -p);
    double q = s * p;
    double qe = fma(s, p, -q);
    double r = s * pe;
    double re = fma(s, pe, -r);
    if (!lm_exp_in_range(p) || !lm_exp_in_range(q) || (pe != 0.0 && !lm_exp_in_range(r))) {
        x->ok = 0;
        return;
    }
    lm_exp_add(x, q);
    lm_exp_add(x, qe);
    lm_exp_add(x, r);
    lm_exp_add(x, re);
}

LM_FN double lm_exp_estimate(const lm_expansion *x) {
    double s = 0.0;
    for (int i = x->n - 1; i >= 0; i--) {
        s += x->c[i];
    }
    return s;
}

/* The sign of (x - m), exactly: the largest component of x - m decides. */
LM_FN int lm_exp_compare(const lm_expansion *x, double m) {
    lm_expansion d = *x;
    lm_exp_add(&d, -m);
    if (d.n == 0) {
        return 0;
    }
    return d.c[d.n - 1] > 0.0 ? 1 : -1;
}

/* Format helpers on values (doubles that are exactly values of the format, or +-Inf). */
LM_FN double lm_fmt_round(double x, int fmt) {
    return fmt == LM_BF16 ? lm_round_to(x, 8, -126, LM_BF16_MAX)
           : fmt == LM_F16 ? lm_round_to(x, 11, -14, LM_F16_MAX)
                           : lm_round_to(x, 24, -126, LM_F32_MAX);
}

LM_FN double lm_fmt_value(uint32_t bits, int fmt) {
    return fmt == LM_BF16 ? lm_widen_bf16(bits) : fmt == LM_F16 ? lm_widen_f16(bits) : lm_widen_f32(bits);
}

LM_FN double lm_fmt_next_up(double y, int fmt) {
    if (y == 0.0) {
        return fmt == LM_BF16 ? 0x1p-133 : fmt == LM_F16 ? 0x1p-24 : 0x1p-149;
    }
    if (y > LM_F32_MAX) { /* +Inf */
        return y;
    }
    uint32_t bits = lm_round_bits(y, fmt);
    return lm_fmt_value(y > 0.0 ? bits + 1u : bits - 1u, fmt);
}

LM_FN double lm_fmt_next_down(double y, int fmt) {
    return -lm_fmt_next_up(-y, fmt);
}

/* The rounding boundary between adjacent values a < b; next to infinity, the overflow threshold. */
LM_FN double lm_fmt_midpoint(double a, double b, int fmt) {
    double threshold = fmt == LM_BF16 ? 0x1.ffp127 : fmt == LM_F16 ? 65520.0 : 0x1.ffffffp127;
    if (b > LM_F32_MAX) {
        return threshold;
    }
    if (a < -LM_F32_MAX) {
        return -threshold;
    }
    return 0.5 * a + 0.5 * b;
}

LM_FN double lm_fmt_even_of(double a, double b, int fmt) {
    return (lm_round_bits(a, fmt) & 1u) == 0u ? a : b;
}

/* x rounded once to the format, ties to even (+0 for an exact zero); *ok = 0 if it did not settle. */
LM_FN double lm_exp_round(const lm_expansion *x, int fmt, int *ok) {
    *ok = 1;
    if (x->n == 0) {
        return 0.0;
    }
    double y = lm_fmt_round(lm_exp_estimate(x), fmt);
    for (int step = 0; step < 4; step++) {
        if (!(y > LM_F32_MAX)) { /* not +Inf */
            double up = lm_fmt_next_up(y, fmt);
            int above = lm_exp_compare(x, lm_fmt_midpoint(y, up, fmt));
            if (above > 0) {
                y = up;
                continue;
            }
            if (above == 0) {
                return lm_fmt_even_of(y, up, fmt);
            }
        }
        if (!(y < -LM_F32_MAX)) { /* not -Inf */
            double down = lm_fmt_next_down(y, fmt);
            int below = lm_exp_compare(x, lm_fmt_midpoint(down, y, fmt));
            if (below < 0) {
                y = down;
                continue;
            }
            if (below == 0) {
                return lm_fmt_even_of(down, y, fmt);
            }
        }
        return y;
    }
    *ok = 0;
    return y;
}

#endif /* LORAMERGE_EXACT_CUH */
