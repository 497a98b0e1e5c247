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
 * An fp32 value rounded once, to nearest even, to D's bits, without a branch. BF16: the carry
 * trick on the bits (exact for every finite float, subnormals and overflow to Inf included, and
 * for +-Inf itself); F16: cvt.rn.f16.f32, IEEE round-to-nearest-even (+-Inf to +-Inf); a NaN gives
 * D's canonical quiet NaN (lm_qnan_bits, what rounding.cuh gives), as the CPU codecs encode it
 * (FloatFormat.encode; the device's own NaN is 0x7fffffff). F32: the bits as they are, NaN
 * canonical.
 */
template <int FMT>
__device__ __forceinline__ uint32_t round_float(float v) {
    if (FMT == LM_F32) return isnan(v) ? 0x7fc00000u : __float_as_uint(v);
    if (FMT == LM_BF16) {
        uint32_t b = __float_as_uint(v);
        return isnan(v) ? 0x7fc0u : (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    }
    return isnan(v) ? 0x7e00u : (uint32_t)__half_as_ushort(__float2half_rn(v));
}

/* D bits to fp32, exactly. */
template <int FMT>
__device__ __forceinline__ float widen_to_float(uint32_t bits) {
    if (FMT == LM_BF16) return __uint_as_float(bits << 16);
    if (FMT == LM_F16) return __half2float(__ushort_as_half((unsigned short)bits));
    return __uint_as_float(bits);
}

#endif /* LORAMERGE_FLOATS_CUH */
