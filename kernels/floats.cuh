/*
 * fp32 values to and from the bits of the merge's dtypes (BF16, F16, F32), on the device: shared
 * by the kernels that dequantize a stored weight into the merge's working copy of W (nf4.cu,
 * quant.cu).
 */
#ifndef LORAMERGE_FLOATS_CUH
#define LORAMERGE_FLOATS_CUH

#include <cuda_fp16.h>

#include "rounding.cuh"

/*
 * An fp32 value rounded once, to nearest even, to D's bits. BF16: the carry trick on the bits
 * (exact for every finite float, subnormals and overflow to Inf included); F16: cvt.rn.f16.f32,
 * IEEE round-to-nearest-even; non-finite values through rounding.cuh. F32: the bits as they are,
 * but a NaN is the canonical quiet NaN, as the CPU codecs encode it (FloatFormat.encode; the
 * device's own NaN is 0x7fffffff).
 */
template <int FMT>
__device__ __forceinline__ uint32_t round_float(float v) {
    if (FMT == LM_F32) return isnan(v) ? 0x7fc00000u : __float_as_uint(v);
    if (!isfinite(v)) return lm_round_bits((double)v, FMT);
    if (FMT == LM_BF16) {
        uint32_t b = __float_as_uint(v);
        return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    }
    return (uint32_t)__half_as_ushort(__float2half_rn(v));
}

/* D bits to fp32, exactly. */
template <int FMT>
__device__ __forceinline__ float widen_to_float(uint32_t bits) {
    if (FMT == LM_BF16) return __uint_as_float(bits << 16);
    if (FMT == LM_F16) return __half2float(__ushort_as_half((unsigned short)bits));
    return __uint_as_float(bits);
}

#endif /* LORAMERGE_FLOATS_CUH */
