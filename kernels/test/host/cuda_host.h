/*
 * Enough of CUDA's device environment to compile a kernel file for the host (quant_host.cpp):
 * the qualifiers and launch bounds as nothing, __shared__ as static (a launch runs one block at a
 * time), the thread and block indices per host thread, __syncthreads as a barrier of the block's
 * threads, __shfl_xor_sync as an exchange through the warp's slots at a barrier of its 32
 * threads, the vector types, the rounding intrinsics as the IEEE operations they are (built
 * with -ffp-contract=off, so nothing is fused; __fma_rn is std::fma), and the 32-bit atomics as
 * std::atomic_ref's.
 */
#ifndef LORAMERGE_CUDA_HOST_H
#define LORAMERGE_CUDA_HOST_H

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>

using std::isfinite;
using std::isnan;
using std::min;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct lm_dim3 {
    unsigned x, y, z;
};
extern thread_local lm_dim3 threadIdx;
extern thread_local lm_dim3 blockIdx;
extern lm_dim3 blockDim;
extern lm_dim3 gridDim;
extern thread_local std::barrier<> *lm_block_barrier;

static inline void __syncthreads() {
    lm_block_barrier->arrive_and_wait();
}

/* A warp of host threads: a barrier of its 32 threads and two sets of a slot per lane for the shuffles, used in turn. */
struct lm_warp {
    std::barrier<> *barrier;
    uint64_t *slots; /* 64: two sets of 32 */
    unsigned set;
};
extern thread_local lm_warp lm_this_warp;

/*
 * __shfl_xor_sync of a full warp (every lane calls it): lane l gets the value of lane l ^ o. One
 * barrier a shuffle: the slots alternate between two sets, and a lane writes a set again only
 * after the next shuffle's barrier, which every lane reaches after its read of that set.
 */
template <typename V>
static inline V __shfl_xor_sync(unsigned, V v, int o) {
    static_assert(sizeof(V) <= 8, "a 32- or 64-bit value");
    unsigned lane = (threadIdx.x + blockDim.x * threadIdx.y) & 31u;
    lm_this_warp.set ^= 1u;
    uint64_t *slots = lm_this_warp.slots + 32 * lm_this_warp.set;
    std::memcpy(&slots[lane], &v, sizeof(V));
    lm_this_warp.barrier->arrive_and_wait();
    V r;
    std::memcpy(&r, &slots[lane ^ (unsigned)o], sizeof(V));
    return r;
}

struct uint2 {
    uint32_t x, y;
};
struct uint4 {
    uint32_t x, y, z, w;
};
struct double2 {
    double x, y;
};
struct int4 {
    int x, y, z, w;
};

static inline uint2 make_uint2(uint32_t a, uint32_t b) {
    return {a, b};
}

static inline uint4 make_uint4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return {a, b, c, d};
}

static inline float __fmul_rn(float a, float b) {
    return a * b;
}

static inline float __fadd_rn(float a, float b) {
    return a + b;
}

static inline double __dmul_rn(double a, double b) {
    return a * b;
}

static inline double __dadd_rn(double a, double b) {
    return a + b;
}

static inline double __dsub_rn(double a, double b) {
    return a - b;
}

static inline double __fma_rn(double a, double b, double c) {
    return std::fma(a, b, c);
}

static inline float __fdiv_rn(float a, float b) {
    return a / b;
}

static inline float __frcp_rn(float a) {
    return 1.0f / a;
}

static inline float __fmaf_rn(float a, float b, float c) {
    return std::fmaf(a, b, c);
}

static inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

static inline uint32_t __float_as_uint(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

static inline float __uint_as_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

static inline unsigned int atomicAdd(unsigned int *a, unsigned int v) {
    return std::atomic_ref<unsigned int>(*a).fetch_add(v);
}

static inline unsigned int atomicMax(unsigned int *a, unsigned int v) {
    std::atomic_ref<unsigned int> r(*a);
    unsigned int old = r.load();
    while (old < v && !r.compare_exchange_weak(old, v)) {
    }
    return old;
}

#endif
