/*
 * The merge of one block: v = W + P in fp64, where P = s * U * V^T is what cuBLAS DGEMM wrote
 * (beta = 0) and W is read in its own dtype and widened in registers, rounded once, correctly,
 * back to W's dtype, with the elements the fp64 error bound cannot settle handed to the host.
 * One pass over W, P and the output (20 bytes an element for BF16); a separate widen pass and a
 * DGEMM with beta = 1 into a fp64 copy of W would move 38 (benchmarks/RESULTS.md).
 */
#include "rounding.cuh"
#include "exact.cuh"

/*
 * merge_round_{bf16,f16,f32}(   the output format; W may be in any of the three (srcFmt)
 *     const double* p,          DGEMM product, ROW-MAJOR [rows, cols], row pitch ldp
 *     const void* w,            original W, row-major [rows, cols], contiguous, in format srcFmt
 *     int srcFmt,               LM_BF16, LM_F16 or LM_F32 (rounding.cuh)
 *     T* out,                   result, row-major [rows, cols], contiguous; may alias w when srcFmt is the output format
 *     const double* nU,         [rows]  L2 norm of row i of U
 *     const double* nV,         [cols]  L2 norm of row j of V
 *     double absScale,          |s|, the LoRA scale
 *     double K,                 the engine's bound constant (TensorJob.boundK)
 *     long long rows, long long cols, long long ldp,
 *     long long indexBase,      added to i * cols + j in the ambiguous list
 *     unsigned long long* counters,  [0] ambiguous, [1] overflow, [2] nan; the host zeroes
 *     long long* ambiguousIdx,  [capacity] indexBase + i * cols + j of ambiguous elements
 *     long long capacity)
 *   T is unsigned short (BF16, F16 bits) or unsigned int (F32 bits).
 *   Per element: e = K * (|v| + 2 * absScale * nU[i] * nV[j]); lm_round_element
 *   (rounding.cuh) decides. A W converted to another format (--dtype) is widened exactly from its
 *   own; a NaN or infinite W is kept, converted (lm_round_bits of its value). counters[0] counts every ambiguous element; only the first
 *   `capacity` indices are written, so the host compares counters[0] with capacity.
 *   Threads: x of the grid handles columns j = x, x + gridDim.x * blockDim.x, ...;
 *   blockIdx.y handles rows i = blockIdx.y, blockIdx.y + gridDim.y, ... (coalesced).
 *   Launch: block (256, 1, 1); grid (ceil(cols / 256), min(rows, 65535), 1).
 */
/* Element idx of a W in srcFmt: its bits, and its value (exact). */
__device__ __forceinline__ uint32_t lm_src_bits(const void *w, int srcFmt, long long idx) {
    return srcFmt == LM_F32 ? ((const unsigned int *)w)[idx] : (uint32_t)((const unsigned short *)w)[idx];
}

template <int FMT, typename T>
__device__ __forceinline__ void merge_round_rows(const double *__restrict__ p, const void *w, int srcFmt, T *out, const double *__restrict__ nU,
                                                 const double *__restrict__ nV, double absScale, double K, long long rows,
                                                 long long cols, long long ldp, long long indexBase,
                                                 unsigned long long *counters, long long *ambiguousIdx, long long capacity) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        double nUi = nU[i];
        for (long long j = col0; j < cols; j += colStride) {
            long long idx = i * cols + j;
            uint32_t srcBits = lm_src_bits(w, srcFmt, idx);
            double wide = lm_fmt_value(srcBits, srcFmt);
            /* W in the output format: its own bits, or for a conversion its value rounded (a NaN or Inf W is kept as such) */
            uint32_t wBits = srcFmt == FMT ? srcBits : lm_round_bits(wide, FMT);
            double vij = wide + p[i * ldp + j];
            double e = lm_error_bound(vij, K, absScale, nUi, nV[j], 0.0, 0.0);
            uint32_t bits;
            int what = lm_round_element(vij, e, wBits, FMT, &bits);
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

#define LM_MERGE_ROUND_KERNEL(NAME, FMT, T)                                                   \
    extern "C" __global__ void NAME(                                                          \
        const double *__restrict__ p, const void *w, int srcFmt, T *out,                      \
        const double *__restrict__ nU, const double *__restrict__ nV, double absScale,        \
        double K, long long rows, long long cols, long long ldp, long long indexBase,         \
        unsigned long long *counters, long long *ambiguousIdx, long long capacity) {          \
        merge_round_rows<FMT, T>(p, w, srcFmt, out, nU, nV, absScale, K, rows, cols, ldp, indexBase, \
                                 counters, ambiguousIdx, capacity);                           \
    }

LM_MERGE_ROUND_KERNEL(merge_round_bf16, LM_BF16, unsigned short)
LM_MERGE_ROUND_KERNEL(merge_round_f16, LM_F16, unsigned short)
LM_MERGE_ROUND_KERNEL(merge_round_f32, LM_F32, unsigned int)

/*
 * settle_{bf16,f16,f32}(
 *     const double* u,          U of the block's rows, row-major [rows, rank] (the factors' U at row0)
 *     const double* vt,         V^T, row-major [rank, cols]
 *     long long rank, double scale,
 *     const void* w, int srcFmt,  W of the block, as merge_round read it
 *     T* out,                   merge_round's output, where settled elements are rewritten
 *     long long cols, long long indexBase,
 *     unsigned long long* counters,  [0] ambiguous (from merge_round), [1] overflow, [3] left to the host
 *     const long long* ambiguousIdx, long long capacity,
 *     long long* hostIdx)       [capacity] the elements this kernel could not settle
 *   Runs after merge_round on the same stream: each listed ambiguous element is recomputed
 *   exactly (exact.cuh) and rounded once; an overflow to +-Inf is counted in counters[1]; an
 *   element outside the exact range is listed in hostIdx (counters[3]) for the host. When
 *   merge_round listed more than `capacity`, it does nothing: the host merges the whole block.
 *   Threads: one per listed element, grid-stride. Launch: block (256, 1, 1), grid (256, 1, 1).
 */
template <int FMT, typename T>
__device__ __forceinline__ void settle_list(const double *__restrict__ u, const double *__restrict__ vt, long long rank, double scale,
                                            const void *w, int srcFmt, T *out, long long cols, long long indexBase,
                                            unsigned long long *counters,
                                            const long long *ambiguousIdx, long long capacity, long long *hostIdx) {
    long long count = (long long)counters[0];
    if (count > capacity) {
        return;
    }
    for (long long a = (long long)blockIdx.x * blockDim.x + threadIdx.x; a < count; a += (long long)gridDim.x * blockDim.x) {
        long long e = ambiguousIdx[a] - indexBase;
        long long i = e / cols;
        long long j = e - i * cols;
        lm_expansion x;
        lm_exp_clear(&x);
        lm_exp_add(&x, lm_fmt_value(lm_src_bits(w, srcFmt, e), srcFmt));
        for (long long k = 0; k < rank; k++) {
            lm_exp_add_scaled_product(&x, scale, u[i * rank + k], vt[k * cols + j]);
        }
        int ok = 0;
        double y = 0.0;
        if (x.ok) {
            y = lm_exp_round(&x, FMT, &ok);
        }
        if (!ok) {
            unsigned long long slot = atomicAdd(&counters[3], 1ull);
            hostIdx[slot] = ambiguousIdx[a];
            continue;
        }
        uint32_t bits = lm_round_bits(y, FMT);
        out[e] = (T)bits;
        if (lm_bits_nonfinite(bits, FMT)) {
            atomicAdd(&counters[1], 1ull);
        }
    }
}

#define LM_SETTLE_KERNEL(NAME, FMT, T)                                                              \
    extern "C" __global__ void NAME(                                                                \
        const double *__restrict__ u, const double *__restrict__ vt, long long rank, double scale,   \
        const void *w, int srcFmt, T *out, long long cols, long long indexBase,                      \
        unsigned long long *counters,                                                               \
        const long long *ambiguousIdx, long long capacity, long long *hostIdx) {                    \
        settle_list<FMT, T>(u, vt, rank, scale, w, srcFmt, out, cols, indexBase, counters, ambiguousIdx, \
                            capacity, hostIdx);                                                     \
    }

LM_SETTLE_KERNEL(settle_bf16, LM_BF16, unsigned short)
LM_SETTLE_KERNEL(settle_f16, LM_F16, unsigned short)
LM_SETTLE_KERNEL(settle_f32, LM_F32, unsigned int)

/*
 * dora_round_{bf16,f16,f32}(    DoRA with one norm per output row (Linear, Conv): the merge of a block
 *     const double* p, const void* w, int srcFmt, T* out,  as merge_round, ldp = cols
 *     const double* nU, const double* nV, double absScale, double K,
 *     const double* magnitude,  [rows] m of the block's rows
 *     long long rows, long long cols,
 *     unsigned long long* counters, long long* ambiguousIdx, long long capacity)
 *   Per row i: v = W + P in fp64 with its bound e (as merge_round), S = sum v^2 and
 *   E = sum 2|v| e (a block-wide reduction); relS = (E + (cols + 2) u S) / S bounds S's relative
 *   error whatever the summation order; the row's factor f = m_i / sqrt(S) is known to relative
 *   rel = relS / 2 + 3u; each output is round(f v) with bound 2 (|f| e + |f v| (rel + u)), or
 *   ambiguous (the whole row when relS is not below 1e-3 or f is not finite). The same bounds as
 *   engine/cpu/CpuMerge, so whatever either decides is the correctly rounded value; the host
 *   decides the ambiguous ones exactly (ExactMath, decimal: DoRA's square root has no short exact form).
 *   Threads: one block per row (grid-stride over rows), 256 threads over its columns.
 *   Launch: block (256, 1, 1), grid (min(rows, 65535), 1, 1).
 */
template <int FMT, typename T>
__device__ __forceinline__ void dora_round_rows(const double *__restrict__ p, const void *w, int srcFmt, T *out,
                                                const double *__restrict__ nU, const double *__restrict__ nV, double absScale, double K,
                                                const double *__restrict__ magnitude, long long rows, long long cols,
                                                unsigned long long *counters, long long *ambiguousIdx, long long capacity) {
    __shared__ double partSq[256];
    __shared__ double partErr[256];
    const double u = 0x1p-53;
    for (long long i = blockIdx.x; i < rows; i += gridDim.x) {
        double nUi = nU[i];
        double sq = 0.0;
        double er = 0.0;
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            long long idx = i * cols + j;
            double wide = lm_fmt_value(lm_src_bits(w, srcFmt, idx), srcFmt);
            double v = wide + p[idx];
            double e = lm_error_bound(v, K, absScale, nUi, nV[j], 0.0, 0.0);
            sq += v * v;
            er += 2.0 * fabs(v) * e;
        }
        partSq[threadIdx.x] = sq;
        partErr[threadIdx.x] = er;
        __syncthreads();
        for (int half = blockDim.x / 2; half > 0; half >>= 1) {
            if (threadIdx.x < half) {
                partSq[threadIdx.x] += partSq[threadIdx.x + half];
                partErr[threadIdx.x] += partErr[threadIdx.x + half];
            }
            __syncthreads();
        }
        double sumSq = partSq[0];
        double sumErr = partErr[0];
        __syncthreads();
        double relS = (sumErr + (double)(cols + 2) * u * sumSq) / sumSq;
        double factor = magnitude[i] / sqrt(sumSq);
        double factorRel = relS / 2.0 + 3.0 * u;
        int rowUndecidable = !(relS < 1e-3) || !(fabs(factor) <= 0x1.fffffffffffffp1023);
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            long long idx = i * cols + j;
            uint32_t srcBits = lm_src_bits(w, srcFmt, idx);
            double wide = lm_fmt_value(srcBits, srcFmt);
            uint32_t wBits = srcFmt == FMT ? srcBits : lm_round_bits(wide, FMT);
            double v = wide + p[idx];
            double e = lm_error_bound(v, K, absScale, nUi, nV[j], 0.0, 0.0);
            double val = factor * v;
            double err = 2.0 * (fabs(factor) * e + fabs(val) * (factorRel + u));
            uint32_t bits;
            int what;
            if (rowUndecidable && !lm_bits_nonfinite(wBits, FMT)) {
                bits = lm_round_bits(val, FMT);
                what = LM_ELEM_AMBIGUOUS;
            } else {
                what = lm_round_element(val, err, wBits, FMT, &bits);
            }
            out[idx] = (T)bits;
            if (what == LM_ELEM_AMBIGUOUS) {
                unsigned long long slot = atomicAdd(&counters[0], 1ull);
                if ((long long)slot < capacity) {
                    ambiguousIdx[slot] = idx;
                }
            } else if (what == LM_ELEM_OVERFLOW) {
                atomicAdd(&counters[1], 1ull);
            } else if (what == LM_ELEM_NAN) {
                atomicAdd(&counters[2], 1ull);
            }
        }
    }
}

#define LM_DORA_ROUND_KERNEL(NAME, FMT, T)                                                              \
    extern "C" __global__ void NAME(                                                                    \
        const double *__restrict__ p, const void *w, int srcFmt, T *out,                                \
        const double *__restrict__ nU, const double *__restrict__ nV, double absScale, double K,        \
        const double *__restrict__ magnitude, long long rows, long long cols,                           \
        unsigned long long *counters, long long *ambiguousIdx, long long capacity) {                    \
        dora_round_rows<FMT, T>(p, w, srcFmt, out, nU, nV, absScale, K, magnitude, rows, cols, counters, \
                                ambiguousIdx, capacity);                                                \
    }

LM_DORA_ROUND_KERNEL(dora_round_bf16, LM_BF16, unsigned short)
LM_DORA_ROUND_KERNEL(dora_round_f16, LM_F16, unsigned short)
LM_DORA_ROUND_KERNEL(dora_round_f32, LM_F32, unsigned int)
