/*
 * extract's ΔW = tuned − base on the device (pipeline/ExtractRunner.java, engine/cuda/CudaWeightDelta.java):
 *
 *   extract_delta        ΔW of a row block in fp64 from the two weights as stored (BF16, F16 or F32,
 *                        each its own format), exactly as engine/DeltaRows.java forms it: both values
 *                        widened exactly (rounding.cuh), one IEEE subtraction. Also the smallest
 *                        element index where either value is NaN or ±Inf (atomicMin, so the first one
 *                        in row-major order whatever the schedule), for the host to name it.
 *   extract_row_squares  per row of a fp64 matrix, Σ_j a[i, j]², in a fixed order (each thread sums its
 *                        columns j ≡ t (mod 256) in order, then a fixed tree over the 256 partial sums),
 *                        so the same matrix gives the same bits on every run; the host adds the rows in
 *                        order.
 *
 * Launch: extract_delta with a 2-D grid (ceil(cols / 256), min(rows, 65535)) of 256 threads, x over
 * columns, y strided over rows; extract_row_squares with min(rows, 65535) blocks of exactly 256 threads
 * (LM_SQ_THREADS), one block per row (strided), 256 doubles of shared memory. Every float64 operation is
 * an explicit __dsub_rn / __dmul_rn / __dadd_rn, so the build's -fmad=true contracts none of them.
 */
#include "rounding.cuh"

#define LM_SQ_THREADS 256

__device__ __forceinline__ double lm_widen(const void *p, int fmt, long long i) {
    if (fmt == LM_F32) {
        return lm_widen_f32(((const unsigned int *)p)[i]);
    }
    unsigned int bits = ((const unsigned short *)p)[i];
    return fmt == LM_BF16 ? lm_widen_bf16(bits) : lm_widen_f16(bits);
}

/*
 * delta[i·ldd + j] = widen(tuned[i·cols + j]) − widen(base[i·cols + j]) for i < rows, j < cols.
 * base and tuned: the block's rows as stored, formats baseFmt and tunedFmt (LM_BF16, LM_F16, LM_F32).
 * firstBad: atomicMin of indexBase + i·cols + j over the elements where either value is NaN or ±Inf
 * (the host sets it to ULLONG_MAX first).
 */
extern "C" __global__ void extract_delta(const void *__restrict__ base, int baseFmt, const void *__restrict__ tuned, int tunedFmt,
                                         double *__restrict__ delta, long long rows, long long cols, long long ldd,
                                         unsigned long long *firstBad, long long indexBase) {
    long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) {
        return;
    }
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        long long e = i * cols + j;
        double b = lm_widen(base, baseFmt, e);
        double t = lm_widen(tuned, tunedFmt, e);
        if (!isfinite(b) || !isfinite(t)) {
            atomicMin(firstBad, (unsigned long long)(indexBase + e));
        }
        delta[i * ldd + j] = __dsub_rn(t, b);
    }
}

/* out[i] = Σ_j a[i·lda + j]² for i < rows, in the fixed order of the file comment. */
extern "C" __global__ void extract_row_squares(const double *__restrict__ a, long long rows, long long cols, long long lda,
                                               double *__restrict__ out) {
    __shared__ double partial[LM_SQ_THREADS];
    for (long long i = blockIdx.x; i < rows; i += gridDim.x) {
        const double *row = a + i * lda;
        double s = 0.0;
        for (long long j = threadIdx.x; j < cols; j += LM_SQ_THREADS) {
            s = __dadd_rn(s, __dmul_rn(row[j], row[j]));
        }
        partial[threadIdx.x] = s;
        __syncthreads();
        for (int w = LM_SQ_THREADS / 2; w > 0; w >>= 1) {
            if (threadIdx.x < w) {
                partial[threadIdx.x] = __dadd_rn(partial[threadIdx.x], partial[threadIdx.x + w]);
            }
            __syncthreads();
        }
        if (threadIdx.x == 0) {
            out[i] = partial[0];
        }
        __syncthreads();
    }
}
