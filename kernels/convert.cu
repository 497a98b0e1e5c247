/*
 * Widening the base weight W from its checkpoint dtype to fp64, before cuBLAS adds the
 * LoRA product into it (DGEMM with beta = 1). Exact: every BF16, F16 and F32 value is a
 * double. Integer bit arithmetic only (rounding.cuh), no conversion intrinsics.
 *
 * All three: (const T* in, double* out, long long n)
 *   T is unsigned short (BF16, F16 bits) or float; n elements, contiguous.
 *   Threads: a 1-D grid-stride loop, element i handled by thread
 *   (blockIdx.x * blockDim.x + threadIdx.x) + k * gridDim.x * blockDim.x.
 *   Launch: block (256, 1, 1); grid (min(ceil(n / 256), 2^31 - 1), 1, 1) or fewer
 *   blocks (any count is correct). No shared memory.
 */
#include "rounding.cuh"

template <typename T, typename F>
__device__ __forceinline__ void widen(const T *__restrict__ in, double *__restrict__ out,
                                      long long n, F toDouble) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = toDouble(in[i]);
    }
}

extern "C" __global__ void widen_bf16_f64(const unsigned short *__restrict__ in,
                                          double *__restrict__ out, long long n) {
    widen(in, out, n, [](unsigned short b) { return lm_widen_bf16(b); });
}

extern "C" __global__ void widen_f16_f64(const unsigned short *__restrict__ in,
                                         double *__restrict__ out, long long n) {
    widen(in, out, n, [](unsigned short b) { return lm_widen_f16(b); });
}

extern "C" __global__ void widen_f32_f64(const float *__restrict__ in, double *__restrict__ out,
                                         long long n) {
    widen(in, out, n, [](float f) { return (double)f; });
}
