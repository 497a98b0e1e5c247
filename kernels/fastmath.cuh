/*
 * bitsandbytes' fp32 fast math on the device (CudaFastMath): subnormal inputs and products
 * flushed (bnb_ftz, bnb_mul) and the hardware reciprocal rcp.approx.ftz.f32 reproduced from the
 * correctly rounded one and the table of significands where the two differ (bnb_rcp,
 * lm_rcp_table), so that every GPU quantizes as the CPU codecs do. Shared by nf4.cu and quant.cu;
 * each module holds its own copy of the table, which the host uploads when it loads the module.
 */
#ifndef LORAMERGE_FASTMATH_CUH
#define LORAMERGE_FASTMATH_CUH

/* CudaFastMath's table: bit m of word m / 32 is set where rcp.approx.ftz.f32 of significand m is
 * not the correctly rounded reciprocal. Uploaded by the host when the module is loaded. */
__device__ unsigned int lm_rcp_table[1 << 18];

/* A subnormal value flushed to zero of its sign (fast math's .ftz); NaN and everything else unchanged. */
__device__ __forceinline__ float bnb_ftz(float x) {
    return fabsf(x) < 1.17549435e-38f ? copysignf(0.0f, x) : x;
}

/* mul.ftz.f32: CudaFastMath.mul. */
__device__ __forceinline__ float bnb_mul(float a, float b) {
    return bnb_ftz(__fmul_rn(bnb_ftz(a), bnb_ftz(b)));
}

/* rcp.approx.ftz.f32 as bitsandbytes' `1.0f / x` computes it: CudaFastMath.rcp. */
__device__ __forceinline__ float bnb_rcp(float x) {
    if (isnan(x)) return x;
    float a = fabsf(bnb_ftz(x));
    float r;
    if (a == 0.0f) {
        r = __int_as_float(0x7f800000);
    } else if (a > 0x1p126f) {
        r = 0.0f;
    } else {
        r = __frcp_rn(a);
        unsigned int m = __float_as_uint(a) & 0x7fffffu;
        if ((lm_rcp_table[m >> 5] >> (m & 31u)) & 1u) {
            /* the other neighbour of the exact 1/a: the sign of 1 - a*r, rounded once, says which */
            r = __uint_as_float(__float_as_uint(r) + (__fmaf_rn(-a, r, 1.0f) > 0.0f ? 1u : 0xffffffffu));
        }
    }
    return copysignf(r, x);
}

#endif /* LORAMERGE_FASTMATH_CUH */
