/*
 * Counting NaN and Inf in a written tensor (the verify step).
 *
 * count_nonfinite_{bf16,f16,f32}(const T* in, long long n, unsigned long long* counts)
 *   counts[0] += number of NaN, counts[1] += number of +-Inf among in[0..n); the host
 *   zeroes counts first (several calls may accumulate).
 *   T is unsigned short (BF16, F16 bits) or unsigned int (F32 bits).
 *   Threads: a 1-D grid-stride loop as widen_*; each warp sums its counts with shuffles
 *   and lane 0 adds them with one atomicAdd per warp (when non-zero).
 *   Launch: block (256, 1, 1) (a multiple of 32); grid (min(ceil(n / 256), 4096), 1, 1).
 */
#include "rounding.cuh"

template <int FMT, typename T>
__device__ __forceinline__ void count_nonfinite(const T *__restrict__ in, long long n,
                                                unsigned long long *counts) {
    unsigned int nans = 0, infs = 0;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint32_t bits = (uint32_t)in[i];
        if (lm_bits_nonfinite(bits, FMT)) {
            if (lm_bits_nan(bits, FMT)) {
                nans++;
            } else {
                infs++;
            }
        }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        nans += __shfl_down_sync(0xffffffffu, nans, offset);
        infs += __shfl_down_sync(0xffffffffu, infs, offset);
    }
    if ((threadIdx.x & 31) == 0) {
        if (nans != 0) {
            atomicAdd(&counts[0], (unsigned long long)nans);
        }
        if (infs != 0) {
            atomicAdd(&counts[1], (unsigned long long)infs);
        }
    }
}

extern "C" __global__ void count_nonfinite_bf16(const unsigned short *__restrict__ in, long long n,
                                                unsigned long long *counts) {
    count_nonfinite<LM_BF16>(in, n, counts);
}

extern "C" __global__ void count_nonfinite_f16(const unsigned short *__restrict__ in, long long n,
                                               unsigned long long *counts) {
    count_nonfinite<LM_F16>(in, n, counts);
}

extern "C" __global__ void count_nonfinite_f32(const unsigned int *__restrict__ in, long long n,
                                               unsigned long long *counts) {
    count_nonfinite<LM_F32>(in, n, counts);
}
