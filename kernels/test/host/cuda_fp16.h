/*
 * The few cuda_fp16.h functions kernels/floats.cuh and kernels/quant.cu use, for the host build of
 * the kernels (quant_host.cpp): fp32 to f16 rounded to nearest even (exact: through double and
 * rint), alone or as a pair, and back.
 */
#ifndef LORAMERGE_HOST_CUDA_FP16_H
#define LORAMERGE_HOST_CUDA_FP16_H

#include <cmath>
#include <cstdint>
#include <cstring>

struct __half {
    unsigned short x;
};

static inline unsigned short lm_host_f16_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    unsigned short sign = (unsigned short)((b >> 16) & 0x8000u);
    uint32_t a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;
    if (a == 0x7f800000u) return sign | 0x7c00u;
    double d = std::fabs((double)f);
    if (d < 0x1p-14) return sign | (unsigned short)std::nearbyint(d * 0x1p24); /* subnormal or zero (1024 is the smallest normal) */
    int e;
    std::frexp(d, &e);
    e -= 1; /* d in [2^e, 2^(e+1)) */
    double q = std::nearbyint(std::ldexp(d, 10 - e)); /* 1024..2048 */
    if (q == 2048.0) {
        q = 1024.0;
        e += 1;
    }
    if (e > 15) return sign | 0x7c00u;
    return sign | (unsigned short)(((e + 15) << 10) | ((unsigned)q - 1024u));
}

static inline __half __float2half_rn(float f) {
    __half h;
    h.x = lm_host_f16_bits(f);
    return h;
}

static inline unsigned short __half_as_ushort(__half h) {
    return h.x;
}

static inline __half __ushort_as_half(unsigned short u) {
    __half h;
    h.x = u;
    return h;
}

/* a pair of halves, x in the low 16 bits of the device's register */
struct __half2 {
    __half x, y;
};

static inline __half2 __floats2half2_rn(float a, float b) {
    return {__float2half_rn(a), __float2half_rn(b)};
}

static inline __half __low2half(__half2 h) {
    return h.x;
}

static inline __half __high2half(__half2 h) {
    return h.y;
}

static inline float __half2float(__half h) {
    unsigned e = (h.x >> 10) & 31u;
    unsigned m = h.x & 1023u;
    double v = e == 0 ? m * 0x1p-24 : e == 31 ? (m ? NAN : INFINITY) : std::ldexp(1024.0 + m, (int)e - 25);
    return (float)((h.x & 0x8000u) ? -v : v);
}

#endif
