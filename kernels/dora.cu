/*
 * DoRA support, all fp64 on the merged values v (ROW-MAJOR [rows, cols], row pitch ldv):
 * the norms of W + s * delta and the magnitude rescaling, before round_f64_* rounds.
 *
 * row_sumsq_f64(const double* v, double* out, long long rows, long long cols, long long ldv)
 *   out[i] = sum_j v[i,j]^2 (written, not accumulated).
 *   Threads: one block per row (rows i = blockIdx.x, blockIdx.x + gridDim.x, ...); the
 *   block's threads stride over the row, then reduce through warp shuffles and shared
 *   memory in a fixed order (the same result for the same launch shape).
 *   Launch: block (256, 1, 1) (a multiple of 32, at most 1024); grid (min(rows, 65535), 1, 1).
 *
 * col_sumsq_f64(const double* v, double* out, long long rows, long long cols, long long ldv)
 *   out[j] += sum_i v[i,j]^2 over the rows of this call, with atomicAdd on double (sm_60+),
 *   so consecutive row blocks of one tensor accumulate into one out; the host zeroes out
 *   before the first block. The order of the additions varies between runs: the error
 *   bound covers it (README).
 *   Threads: x covers columns (j = blockIdx.x * blockDim.x + threadIdx.x, + gridDim.x *
 *   blockDim.x, ...); blockIdx.y strides over rows (i = blockIdx.y, + gridDim.y, ...);
 *   one atomicAdd per thread and column.
 *   Launch: block (256, 1, 1); grid (ceil(cols / 256), min(rows, 64), 1): a larger
 *   grid.y gives more parallelism and more atomics.
 *
 * scale_rows_f64(double* v, const double* f, long long rows, long long cols, long long ldv)
 *   v[i,j] *= f[i].
 * scale_cols_f64(double* v, const double* f, long long rows, long long cols, long long ldv)
 *   v[i,j] *= f[j].
 *   Threads and launch: as round_f64_*: block (256, 1, 1); grid (ceil(cols / 256),
 *   min(rows, 65535), 1); x covers columns, y strides over rows.
 */

__device__ __forceinline__ double warp_sum(double x) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        x += __shfl_down_sync(0xffffffffu, x, offset);
    }
    return x;
}

extern "C" __global__ void row_sumsq_f64(const double *__restrict__ v, double *__restrict__ out,
                                         long long rows, long long cols, long long ldv) {
    __shared__ double warpSums[32];
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    int warps = blockDim.x >> 5;
    for (long long i = blockIdx.x; i < rows; i += gridDim.x) {
        const double *row = v + i * ldv;
        double s = 0.0;
        for (long long j = threadIdx.x; j < cols; j += blockDim.x) {
            s += row[j] * row[j];
        }
        s = warp_sum(s);
        if (lane == 0) {
            warpSums[warp] = s;
        }
        __syncthreads();
        if (warp == 0) {
            s = lane < warps ? warpSums[lane] : 0.0;
            s = warp_sum(s);
            if (lane == 0) {
                out[i] = s;
            }
        }
        __syncthreads(); /* warpSums is reused by the next row */
    }
}

extern "C" __global__ void col_sumsq_f64(const double *__restrict__ v, double *__restrict__ out,
                                         long long rows, long long cols, long long ldv) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += colStride) {
        double s = 0.0;
        for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
            double x = v[i * ldv + j];
            s += x * x;
        }
        atomicAdd(&out[j], s);
    }
}

extern "C" __global__ void scale_rows_f64(double *__restrict__ v, const double *__restrict__ f,
                                          long long rows, long long cols, long long ldv) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        double fi = f[i];
        for (long long j = col0; j < cols; j += colStride) {
            v[i * ldv + j] *= fi;
        }
    }
}

extern "C" __global__ void scale_cols_f64(double *__restrict__ v, const double *__restrict__ f,
                                          long long rows, long long cols, long long ldv) {
    long long colStride = (long long)gridDim.x * blockDim.x;
    long long col0 = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (long long i = blockIdx.y; i < rows; i += gridDim.y) {
        for (long long j = col0; j < cols; j += colStride) {
            v[i * ldv + j] *= f[j];
        }
    }
}
