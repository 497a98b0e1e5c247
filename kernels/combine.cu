/*
 * The task-arithmetic family of several adapters (docs/FORMATS.md §8.2) on the device, bit for
 * bit the CPU engine's (engine/DenseCombination.java, engine/Elementwise.java, engine/DareMask.java):
 * every float64 operation is an explicit __dmul_rn / __dadd_rn / __ddiv_rn, which nvcc never
 * contracts into a fused multiply-add (the build passes -fmad=true), in the order the CPU does
 * them. Three kernels:
 *
 *   combine_histogram    one pass of the top-D selection (engine/TopSelection.java): per element
 *                        of one adapter's ΔW in a row block, the digit of |ΔW|'s bits that the
 *                        pass counts, added to a histogram of the whole tensor (integer atomics,
 *                        so the order is free)
 *   combine_round_{bf16,f16,f32}
 *                        Δ of every element of a row block (trim by the selection's cut, or DARE's
 *                        drop and 1/D, then the weighted sum or TIES, times λ), W + Δ in float64
 *                        with its bound (2^-52·|v|, 0 where Δ = 0) and lm_round_element
 *                        (rounding.cuh): the elements the bound leaves undecided are listed for
 *                        the host, which settles them exactly, as for merge_round.
 *   combine_delta        Δ of every element of a row block, as combine_round forms it, written as
 *                        float64 into a device matrix: the dense combination of PEFT's *_svd
 *                        methods, which the SVD then decomposes on the device
 *                        (engine/cuda/CudaWeightDelta.java).
 *
 * The factors of every adapter of the tensor are in two arrays, U_all and Vt_all, adapter a's
 * U [rows, r_a] (the whole tensor's rows) at U_all + uOff[a] and Vt [r_a, cols] at Vt_all + vtOff[a].
 * The small parameters are two arrays:
 *   ip (long long): [0] parts n (<= LM_MAX_PARTS), [1] rule, [2] majority (0 total, 1 frequency),
 *                   [3 + a] uOff, [11 + a] vtOff, [19 + a] rank, [27 + a] DARE key, [35 + a] keepFrom
 *   dp (double):    [0] density, [1] lambda, [2 + a] scale s_a, [10 + a] weight w_a
 * keepFrom[a] is the selection's cut as |ΔW| bits (keep key >= keepFrom; 0 keeps all).
 */
#include "rounding.cuh"

#define LM_MAX_PARTS 8
/* CombineMethod.Rule, in its order */
#define LM_RULE_SUM 0
#define LM_RULE_MAGNITUDE 1
#define LM_RULE_TIES 2
#define LM_RULE_DARE 3
#define LM_RULE_DARE_TIES 4

#define LM_GAMMA 0x9E3779B97F4A7C15ull

/* SplitMix64's output function (engine/DareMask.java mix). */
__device__ __forceinline__ unsigned long long lm_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* ΔW_a[gi, j] = s_a · Σ_k U[gi, k]·Vt[k, j], k in order, zero U entries skipped (DenseCombination.partDelta). */
__device__ __forceinline__ double lm_part_delta(const double *__restrict__ u, const double *__restrict__ vt, int r, long long cols,
                                                long long gi, long long j, double scale) {
    const double *ur = u + gi * r;
    double d = 0.0;
    for (int k = 0; k < r; k++) {
        double uk = ur[k];
        if (uk != 0.0) {
            d = __dadd_rn(d, __dmul_rn(uk, vt[(long long)k * cols + j]));
        }
    }
    return __dmul_rn(scale, d);
}

/* |x|'s bits, which order as |x| does (TopSelection.key). */
__device__ __forceinline__ long long lm_key(double x) {
    return __double_as_longlong(x) & 0x7fffffffffffffffll;
}

/*
 * combine_histogram(const double* U_all, const double* Vt_all, const long long* ip, const double* dp,
 *                   int part, long long row0, long long rows, long long cols,
 *                   int shift, int bits, long long prefix, unsigned long long* hist)
 *   For the block's rows [row0, row0 + rows) of the tensor: key = |ΔW_part| bits; when
 *   key >> (shift + bits) == prefix, hist[(key >> shift) & (2^bits - 1)] += 1.
 *   Threads: as merge_round: x over columns (grid-stride), blockIdx.y over rows.
 *   Launch: block (256, 1, 1); grid (ceil(cols / 256), min(rows, 65535), 1).
 */
extern "C" __global__ void combine_histogram(const double *__restrict__ uAll, const double *__restrict__ vtAll, const long long *__restrict__ ip,
                                             const double *__restrict__ dp, int part, long long row0, long long rows, long long cols, int shift,
                                             int bits, long long prefix, unsigned long long *hist) {
    const double *u = uAll + ip[3 + part];
    const double *vt = vtAll + ip[11 + part];
    int r = (int)ip[19 + part];
    double scale = dp[2 + part];
    long long mask = (1ll << bits) - 1;
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        for (long long j = col0; j < cols; j += colStride) {
            long long key = lm_key(lm_part_delta(u, vt, r, cols, row0 + i, j, scale));
            if ((long long)((unsigned long long)key >> (shift + bits)) == prefix) {
                atomicAdd(&hist[(key >> shift) & mask], 1ull);
            }
        }
    }
}

/* Δ of element (gi, j), as DenseCombination.deltaRow computes it (selections without partial ties). */
__device__ __forceinline__ double lm_combined_delta(const double *__restrict__ uAll, const double *__restrict__ vtAll,
                                                    const long long *__restrict__ ip, const double *__restrict__ dp, long long cols,
                                                    long long gi, long long j) {
    int n = (int)ip[0];
    int rule = (int)ip[1];
    double density = dp[0];
    double t[LM_MAX_PARTS];
    for (int a = 0; a < n; a++) {
        double d = lm_part_delta(uAll + ip[3 + a], vtAll + ip[11 + a], (int)ip[19 + a], cols, gi, j, dp[2 + a]);
        if (rule == LM_RULE_MAGNITUDE || rule == LM_RULE_TIES) {
            if (lm_key(d) < ip[35 + a]) {
                d = 0.0;
            }
        } else if ((rule == LM_RULE_DARE || rule == LM_RULE_DARE_TIES) && density < 1.0) {
            unsigned long long e = (unsigned long long)(gi * cols + j);
            double uni = (double)(lm_mix((unsigned long long)ip[27 + a] + (e + 1ull) * LM_GAMMA) >> 11) * 0x1p-53;
            d = uni < density ? __ddiv_rn(d, density) : 0.0;
        }
        t[a] = d;
    }
    double acc = 0.0;
    if (rule != LM_RULE_TIES && rule != LM_RULE_DARE_TIES) {
        for (int a = 0; a < n; a++) {
            acc = __dadd_rn(acc, __dmul_rn(dp[10 + a], t[a]));
        }
    } else {
        int positive;
        if (ip[2] == 0) {
            double m = 0.0;
            for (int a = 0; a < n; a++) {
                m = __dadd_rn(m, t[a]);
            }
            positive = m >= 0.0;
        } else {
            int m = 0;
            for (int a = 0; a < n; a++) {
                m += t[a] > 0.0 ? 1 : t[a] < 0.0 ? -1 : 0;
            }
            positive = m >= 0;
        }
        int count = 0;
        for (int a = 0; a < n; a++) {
            if (positive ? t[a] > 0.0 : t[a] < 0.0) {
                acc = __dadd_rn(acc, __dmul_rn(dp[10 + a], t[a]));
                count++;
            }
        }
        acc = __ddiv_rn(acc, (double)(count > 1 ? count : 1));
    }
    return __dmul_rn(dp[1], acc);
}

/*
 * combine_round_{bf16,f16,f32}(const double* U_all, const double* Vt_all, const long long* ip, const double* dp,
 *     long long row0,           the block's first row in the tensor (for U's rows and DARE's element index)
 *     const T* w, T* out,       the block's W and result, row-major [rows, cols], contiguous
 *     long long rows, long long cols, long long indexBase,
 *     unsigned long long* counters, long long* ambiguousIdx, long long capacity)
 *   As merge_round (round.cu) but with v = W + Δ and e = max(2^-52·|v|, the least double) where
 *   Δ != 0, and v = W, e = 0 where Δ = 0 (CpuMerge.computeRow's dense branch).
 *   Launch: block (256, 1, 1); grid (ceil(cols / 256), min(rows, 65535), 1).
 */
template <int FMT, typename T>
__device__ __forceinline__ void combine_round_rows(const double *__restrict__ uAll, const double *__restrict__ vtAll,
                                                   const long long *__restrict__ ip, const double *__restrict__ dp, long long row0, const T *w,
                                                   T *out, long long rows, long long cols, long long indexBase, unsigned long long *counters,
                                                   long long *ambiguousIdx, long long capacity) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        for (long long j = col0; j < cols; j += colStride) {
            long long idx = i * cols + j;
            uint32_t wBits = (uint32_t)w[idx];
            double wide = FMT == LM_BF16 ? lm_widen_bf16(wBits) : FMT == LM_F16 ? lm_widen_f16(wBits) : lm_widen_f32(wBits);
            double delta = lm_combined_delta(uAll, vtAll, ip, dp, cols, row0 + i, j);
            double v = wide;
            double e = 0.0;
            if (delta != 0.0) {
                v = __dadd_rn(wide, delta);
                e = fmax(__dmul_rn(0x1p-52, fabs(v)), 0x0.0000000000001p-1022);
            }
            uint32_t bits;
            int what = lm_round_element(v, e, wBits, FMT, &bits);
            out[idx] = (T)bits;
            if (what == LM_ELEM_AMBIGUOUS) {
                unsigned long long slot = atomicAdd(&counters[0], 1ull);
                if ((long long)slot < capacity) {
                    ambiguousIdx[slot] = indexBase + idx;
                }
            } else if (what == LM_ELEM_OVERFLOW) {
                atomicAdd(&counters[1], 1ull);
            } else if (what == LM_ELEM_NAN) {
                atomicAdd(&counters[2], 1ull);
            }
        }
    }
}

#define LM_COMBINE_ROUND_KERNEL(NAME, FMT, T)                                                                       \
    extern "C" __global__ void NAME(const double *__restrict__ uAll, const double *__restrict__ vtAll,              \
                                    const long long *__restrict__ ip, const double *__restrict__ dp, long long row0, \
                                    const T *w, T *out, long long rows, long long cols, long long indexBase,         \
                                    unsigned long long *counters, long long *ambiguousIdx, long long capacity) {     \
        combine_round_rows<FMT, T>(uAll, vtAll, ip, dp, row0, w, out, rows, cols, indexBase, counters, ambiguousIdx,  \
                                   capacity);                                                                      \
    }

LM_COMBINE_ROUND_KERNEL(combine_round_bf16, LM_BF16, unsigned short)
LM_COMBINE_ROUND_KERNEL(combine_round_f16, LM_F16, unsigned short)
LM_COMBINE_ROUND_KERNEL(combine_round_f32, LM_F32, unsigned int)

/*
 * combine_delta(const double* U_all, const double* Vt_all, const long long* ip, const double* dp,
 *     long long row0,           the block's first row in the tensor (for U's rows and DARE's element index)
 *     long long rows, long long cols,
 *     long long ldd, double* d) the block's Δ, row-major with row stride ldd: d[i·ldd + j] = Δ(row0 + i, j)
 *   Δ is lm_combined_delta, the value combine_round adds to W (DenseCombination.deltaRow bit for
 *   bit, with λ = 1 for PEFT's methods); the selections' cuts must be in ip.
 *   Threads: as combine_round: x over columns (grid-stride), blockIdx.y over rows.
 *   Launch: block (256, 1, 1); grid (ceil(cols / 256), min(rows, 65535), 1).
 */
extern "C" __global__ void combine_delta(const double *__restrict__ uAll, const double *__restrict__ vtAll, const long long *__restrict__ ip,
                                         const double *__restrict__ dp, long long row0, long long rows, long long cols, long long ldd,
                                         double *d) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        for (long long j = col0; j < cols; j += colStride) {
            d[i * ldd + j] = lm_combined_delta(uAll, vtAll, ip, dp, cols, row0 + i, j);
        }
    }
}
