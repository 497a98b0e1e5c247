/*
 * bitsandbytes NF4 on the device: dequantize a 4-bit weight into the merge's working copy of W,
 * requantize the merged weight (block absmax, nearest code, packing), double-quantize the new
 * absmax, and measure what the requantization kept. Bit for bit the CPU codec
 * (src/main/java/org/loramerge/quant: Nf4Codec, DoubleQuant, DynamicMap, CudaFastMath), which the
 * GPU tests check on every test vector, and so bitsandbytes' CUDA kernels (csrc/kernels.cu), which
 * are built with --use_fast_math: the codec's arithmetic is theirs, restated here with IEEE
 * operations (this file is built without fast math): subnormal inputs and products flushed
 * (bnb_ftz, bnb_mul), and the hardware reciprocal rcp.approx.ftz.f32 reproduced from the correctly
 * rounded one and the table of significands where the two differ (bnb_rcp, lm_rcp_table), which
 * the host uploads once (CudaFastMath), so that every GPU writes what the CPU engine writes.
 *
 * Every fp32 operation is written with an explicit rounding intrinsic (__fmul_rn, __fadd_rn,
 * __fdiv_rn, ...): nvcc may not contract those into an FMA, so each product and sum is rounded
 * exactly where the CPU codec rounds it.
 *
 * Layouts (FORMATS.md §5): a weight of n elements is read flattened row-major in blocks of
 * `blocksize` (a power of two, 32..4096; the last block may be partial); codes are packed two per
 * byte, element 2k in the high nibble, an odd count padded with the code of a 0.0 element of the
 * last block (7, NF4's 0.0, or 0 when that block is all zeros: 0 * inf).
 */
#include "floats.cuh"
#include "fastmath.cuh"
#include "fourbit.cuh"

#define NESTED_BLOCKSIZE 256

/* The NF4 values, codes 0..15 (bitsandbytes get_4bit_type("nf4")), each exactly an fp32. */
#define NF4_V0 -1.0f
#define NF4_V1 -0.6961928009986877f
#define NF4_V2 -0.5250730514526367f
#define NF4_V3 -0.39491748809814453f
#define NF4_V4 -0.28444138169288635f
#define NF4_V5 -0.18477343022823334f
#define NF4_V6 -0.09105003625154495f
#define NF4_V7 0.0f
#define NF4_V8 0.07958029955625534f
#define NF4_V9 0.16093020141124725f
#define NF4_V10 0.24611230194568634f
#define NF4_V11 0.33791524171829224f
#define NF4_V12 0.44070982933044434f
#define NF4_V13 0.5626170039176941f
#define NF4_V14 0.7229568362236023f
#define NF4_V15 1.0f

__constant__ float kNf4[16] = {NF4_V0, NF4_V1, NF4_V2,  NF4_V3,  NF4_V4,  NF4_V5,  NF4_V6,  NF4_V7,
                               NF4_V8, NF4_V9, NF4_V10, NF4_V11, NF4_V12, NF4_V13, NF4_V14, NF4_V15};

/* bitsandbytes FP4, codes 0..15 (FourBitCode.FP4): the magnitudes of the kernel's fp4_dequantization_lut
 * literals as fp32 (0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f), bit 3
 * the sign; code 8 is -0.0. */
__constant__ float kFp4[16] = {0.0f,  0x1.555556p-8f,  0x1.555556p-1f,  1.0f,  0x1.555556p-2f,  0.5f,  0x1.555556p-3f,  0.25f,
                               -0.0f, -0x1.555556p-8f, -0x1.555556p-1f, -1.0f, -0x1.555556p-2f, -0.5f, -0x1.555556p-3f, -0.25f};

/* Decision thresholds: dQuantizeNF4's float literals as nvcc parses them (Nf4Codec.THRESHOLDS);
 * four of them (0|1, 8|9, 12|13, 14|15) are one ulp from the fp32 nearest the midpoint. */
__constant__ float kThreshold[15] = {
    -0x1.b239b2p-1f, -0x1.38a4e0p-1f, -0x1.d70900p-2f, -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,
    -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f,  0x1.ec90c6p-4f,  0x1.a0cfc0p-3f,
    0x1.2b05a8p-2f,  0x1.8ea7f2p-2f,  0x1.00da06p-1f,  0x1.491b5ep-1f,  0x1.b913b2p-1f};

/*
 * nf4_rcp_check(mismatches)
 *   Compares this GPU's rcp.approx.ftz.f32 with bnb_rcp (the table) for every significand m, on
 *   1.m and on 1.m * 2^100, counting the differences into mismatches[0]: 0 on a GPU whose
 *   bitsandbytes build quantizes exactly as loramerge does. One thread per significand.
 */
extern "C" __global__ void nf4_rcp_check(unsigned long long *mismatches) {
    unsigned int m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= (1u << 23)) return;
    for (unsigned int e = 127; e <= 227; e += 100) {
        float x = __uint_as_float((e << 23) | m);
        float hw;
        asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(hw) : "f"(x));
        if (__float_as_uint(hw) != __float_as_uint(bnb_rcp(x))) atomicAdd(mismatches, 1ull);
    }
}

/*
 * The kernels read both tables from shared memory: lanes index them with different codes, which
 * constant memory would serve one address at a time. The values are the code book's (NF4, or FP4
 * when FP4); the thresholds NF4's, which FP4's comparison tree does not read. Every thread of the
 * block must call this.
 */
template <bool FP4>
__device__ __forceinline__ void fourbit_load_tables(float *values, float *thresholds) {
    if (threadIdx.x < 16) {
        values[threadIdx.x] = FP4 ? kFp4[threadIdx.x] : kNf4[threadIdx.x];
        thresholds[threadIdx.x] = threadIdx.x < 15 ? kThreshold[threadIdx.x] : 0.0f;
    }
    __syncthreads();
}

/* The values of the 16 codes of a code book (NF4, or FP4 when FP4) into shared memory. Every thread of the block must call this. */
template <bool FP4>
__device__ __forceinline__ void fourbit_load_values(float *values) {
    if (threadIdx.x < 16) values[threadIdx.x] = FP4 ? kFp4[threadIdx.x] : kNf4[threadIdx.x];
    __syncthreads();
}

/* How many thresholds lie strictly below x: a value on a threshold takes the lower code, NaN code 0. */
__device__ __forceinline__ int nf4_encode(const float *thr, float x) {
    int c = x > thr[7] ? 8 : 0;
    if (x > thr[c + 3]) c += 4;
    if (x > thr[c + 1]) c += 2;
    if (x > thr[c]) c += 1;
    return c;
}

/* The code of a scaled value in the code book (NF4, or FP4 when FP4): nf4_encode, or fp4_encode (fourbit.cuh). */
template <bool FP4>
__device__ __forceinline__ int fourbit_encode(const float *thr, float x) {
    return FP4 ? fp4_encode(x) : nf4_encode(thr, x);
}

__device__ __forceinline__ int nf4_code_at(const unsigned char *packed, long long byteBase, long long e) {
    unsigned int b = packed[(e >> 1) - byteBase];
    return (e & 1) ? (int)(b & 15u) : (int)(b >> 4);
}

/* The D bits of mul.ftz(NF4[code], scale), rounded once to D: what dequantize_4bit returns. */
template <int FMT>
__device__ __forceinline__ uint32_t nf4_dequant_bits(const float *values, int code, float scale) {
    return round_float<FMT>(bnb_mul(values[code], scale));
}

/* xor-reductions over groups of g adjacent lanes (g a power of two <= 32): every lane gets its group's result */
__device__ __forceinline__ float group_max(float v, int g) {
    for (int o = g / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ double group_sum(double v, int g) {
    for (int o = g / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    return group_max(v, 32);
}

__device__ __forceinline__ double warp_sum(double v) {
    return group_sum(v, 32);
}

/* Eight consecutive D values from an element offset that is a multiple of 8 (16-byte aligned for 16-bit D). */
template <int FMT, typename T>
__device__ __forceinline__ void load8(const T *p, float v[8]) {
    if (sizeof(T) == 2) {
        uint4 u = *reinterpret_cast<const uint4 *>(p);
        uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = widen_to_float<FMT>(w[k] & 0xffffu);
            v[2 * k + 1] = widen_to_float<FMT>(w[k] >> 16);
        }
    } else {
        uint4 a = *reinterpret_cast<const uint4 *>(p);
        uint4 b = *reinterpret_cast<const uint4 *>(p + 4);
        uint32_t w[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = widen_to_float<FMT>(w[k]);
    }
}

/* Up to eight D values (len of them, the rest 0), element by element. */
template <int FMT, typename T>
__device__ __forceinline__ void loadSome(const T *p, int len, float v[8]) {
#pragma unroll
    for (int k = 0; k < 8; k++) v[k] = k < len ? widen_to_float<FMT>((uint32_t)p[k]) : 0.0f;
}

/*
 * nf4_decode_absmax(codes, nestedAbsmax, map, offset, nestedBlocksize, n, out)
 *   Double-quantized absmax to fp32: out[i] = fl32(mul.ftz(map[codes[i]], nestedAbsmax[i / nbs]) + offset),
 *   two roundings as bitsandbytes (DoubleQuant.decode). Grid-stride over i < n.
 */
extern "C" __global__ void nf4_decode_absmax(const unsigned char *__restrict__ codes, const float *__restrict__ nestedAbsmax,
                                             const float *__restrict__ map, float offset, long long nestedBlocksize, long long n,
                                             float *__restrict__ out) {
    int shift = __ffsll(nestedBlocksize) - 1; /* a power of two */
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        out[i] = __fadd_rn(bnb_mul(map[codes[i]], nestedAbsmax[i >> shift]), offset);
    }
}

/*
 * 8 elements from their 4 bytes of codes (word, element 2k in the high nibble of byte k), each
 * value mul.ftz(value, scale) rounded once to D, stored at o at once (one 16-byte store, two for
 * F32), so a warp's store instruction covers 512 consecutive bytes. (Runs of 32 codes, four or
 * eight stores a thread 64 bytes apart, ran the FP4 kernel at 0.38 of the copy's traffic, runs of
 * 8 at 0.51: JMH on one H200, benchmarks/RESULTS.md.) ftzScale is bnb_ftz(absmax of the block),
 * computed once for the run; every code book value is 0 or normal, so that bnb_ftz of it is
 * itself and bnb_ftz(value * ftzScale) is bnb_mul(value, absmax), bit for bit.
 */
template <int FMT, typename T>
__device__ __forceinline__ void fourbit_store8(uint32_t word, float ftzScale, const float *values, T *__restrict__ o) {
    uint32_t bits[8];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        uint32_t b = (word >> (8 * k)) & 0xffu;
        bits[2 * k] = round_float<FMT>(bnb_ftz(__fmul_rn(values[b >> 4], ftzScale)));
        bits[2 * k + 1] = round_float<FMT>(bnb_ftz(__fmul_rn(values[b & 15u], ftzScale)));
    }
    if (sizeof(T) == 2) {
        *reinterpret_cast<uint4 *>(o) = make_uint4(bits[0] | (bits[1] << 16), bits[2] | (bits[3] << 16),
                                                   bits[4] | (bits[5] << 16), bits[6] | (bits[7] << 16));
    } else {
        *reinterpret_cast<uint4 *>(o) = make_uint4(bits[0], bits[1], bits[2], bits[3]);
        *reinterpret_cast<uint4 *>(o + 4) = make_uint4(bits[4], bits[5], bits[6], bits[7]);
    }
}

/* Runs of 8 elements a thread takes at once in nf4_dequant (its loads first, then its stores). */
#define DQ_RUNS 4
/* nf4_dequant's threads a block (Nf4Kernels launches it so) */
#define DQ_THREADS 256

/*
 * nf4_dequant_{bf16,f16,f32}(packed, first, count, absmax, blocksize, out)
 * fp4_dequant_{bf16,f16,f32}: the same for an FP4 weight (bitsandbytes' other 4-bit code book,
 *   stored the same way), mul.ftz(FP4[code], absmax) rounded once to D.
 *   Elements [first, first + count) of a weight: packed holds its bytes from first / 2 on,
 *   absmax the decoded absmax of EVERY block of the weight (index e / blocksize).
 *   out[i] = D bits of element first + i (out 16-byte aligned). When first is a multiple of 8
 *   (every row block of a Linear weight with 8 | cols), the elements go in runs of 8 (one 4-byte
 *   word of codes, one block's absmax, fourbit_store8), a block of DQ_THREADS threads taking DQ_RUNS x
 *   DQ_THREADS consecutive runs at a time: thread t the runs t, t + DQ_THREADS, ... (each load and
 *   store of a warp contiguous), all its code words and absmax loaded before the first store, so
 *   that each thread has DQ_RUNS loads in flight rather than one; the rest element by element. Grid-stride:
 *   a grid of ceil(count / 8 / (DQ_RUNS * 256)) blocks of DQ_THREADS = 256 (count when 8 does not divide first).
 */
template <int FMT, typename T, bool FP4>
__device__ __forceinline__ void nf4_dequant(const unsigned char *__restrict__ packed, long long first, long long count,
                                            const float *__restrict__ absmax, long long blocksize, T *__restrict__ out) {
    __shared__ float sVal[16];
    fourbit_load_values<FP4>(sVal);
    int shift = __ffsll(blocksize) - 1; /* blocksizes are powers of two */
    long long vectorEnd = 0;
    if ((first & 7) == 0) {
        long long runs = count >> 3;
        /* DQ_THREADS a compile-time constant: the indices are shifts, and the stores' loop unrolls whole */
        const long long batch = (long long)DQ_RUNS * DQ_THREADS;
        long long batches = (runs + batch - 1) / batch;
        for (long long b = blockIdx.x; b < batches; b += gridDim.x) {
            long long r0 = b * batch + threadIdx.x;
            uint32_t word[DQ_RUNS];
            float scale[DQ_RUNS];
#pragma unroll
            for (int k = 0; k < DQ_RUNS; k++) {
                long long r = r0 + DQ_THREADS * k;
                bool in = r < runs;
                word[k] = in ? *reinterpret_cast<const uint32_t *>(packed + (r << 2)) : 0u;
                scale[k] = in ? bnb_ftz(absmax[(first + (r << 3)) >> shift]) : 0.0f; /* 8 | blocksize: one block */
            }
#pragma unroll
            for (int k = 0; k < DQ_RUNS; k++) {
                long long r = r0 + DQ_THREADS * k;
                if (r >= runs) break;
                fourbit_store8<FMT, T>(word[k], scale[k], sVal, out + (r << 3));
            }
        }
        vectorEnd = runs << 3;
    }
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long threads = (long long)gridDim.x * blockDim.x;
    long long byteBase = first >> 1;
    for (long long i = vectorEnd + tid; i < count; i += threads) {
        long long e = first + i;
        out[i] = (T)nf4_dequant_bits<FMT>(sVal, nf4_code_at(packed, byteBase, e), absmax[e >> shift]);
    }
}

#define LM_NF4_DEQUANT_KERNEL(NAME, FMT, T, FP4)                                                            \
    extern "C" __global__ void NAME(const unsigned char *__restrict__ packed, long long first, long long count, \
                                    const float *__restrict__ absmax, long long blocksize, T *__restrict__ out) { \
        nf4_dequant<FMT, T, FP4>(packed, first, count, absmax, blocksize, out);                             \
    }
LM_NF4_DEQUANT_KERNEL(nf4_dequant_bf16, LM_BF16, unsigned short, false)
LM_NF4_DEQUANT_KERNEL(nf4_dequant_f16, LM_F16, unsigned short, false)
LM_NF4_DEQUANT_KERNEL(nf4_dequant_f32, LM_F32, unsigned int, false)
LM_NF4_DEQUANT_KERNEL(fp4_dequant_bf16, LM_BF16, unsigned short, true)
LM_NF4_DEQUANT_KERNEL(fp4_dequant_f16, LM_F16, unsigned short, true)
LM_NF4_DEQUANT_KERNEL(fp4_dequant_f32, LM_F32, unsigned int, true)

/*
 * Blockwise quantization by groups of G lanes, G = min(32, blocksize / 8): each group takes one
 * NF4 block (a warp takes 32 / G of them), each lane chunks of 8 consecutive elements, read with
 * 16-byte loads; the group's absmax by xor-shuffles, then each lane codes its chunks and stores
 * each as one 4-byte word of packed codes. A partial last block is read element by element and
 * stores only its ceil(len / 2) bytes, the last one padded with the code of 0.0 (loadSome's zeros).
 * Per block as bitsandbytes' kernel: absmax = max |ftz(x)|, r = bnb_rcp(absmax), code =
 * dQuantizeNF4(bnb_mul(x, r)); an all-zero block (r = inf, 0 * inf = NaN) codes 0 throughout.
 * With FP4 the code is dQuantizeFP4's (fp4_encode) and the sums take FP4's values; the rest is
 * the same, as bitsandbytes' kQuantizeBlockwise shares it between the two code books.
 *
 * With BASE (nf4_requant) the merged X and the base W are quantized side by side and the block's
 * survival sums taken; without (nf4_quantize) only X.
 */
template <int FMT, typename T, bool BASE, bool FP4>
__device__ __forceinline__ void nf4_requant(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                            long long first, long long count, long long blocksize, unsigned char *packedX,
                                            unsigned char *packedW, float *absmaxX, float *absmaxW, double *sums) {
    __shared__ float sVal[16], sThr[16];
    fourbit_load_tables<FP4>(sVal, sThr);
    /* G a runtime value: one copy of the code for every blocksize keeps the module small, and so
     * the driver's compile of the PTX at load time short */
    const int bsShift = __ffsll(blocksize) - 1; /* blocksizes are powers of two: shifts, not 64-bit divisions */
    const int gShift = min(5, bsShift - 3);
    const int G = 1 << gShift;
    long long gid = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> gShift;
    int lane = threadIdx.x & (G - 1);
    long long rel = gid << bsShift;
    /* a group past the end still takes part in the shuffles of its warp, with nothing to do */
    bool active = rel < count;
    int len = active ? (int)min(blocksize, count - rel) : 0;
    long long start = first + rel;
    const int step = 8 * G;
    float ax = 0.0f, aw = 0.0f;
    for (int c = 8 * lane; c < len; c += step) {
        float v[8], u[8];
        if (c + 8 <= len) {
            load8<FMT>(x + rel + c, v);
            if (BASE) load8<FMT>(w + rel + c, u);
        } else {
            loadSome<FMT>(x + rel + c, len - c, v);
            if (BASE) loadSome<FMT>(w + rel + c, len - c, u);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            ax = fmaxf(ax, fabsf(bnb_ftz(v[k])));
            if (BASE) aw = fmaxf(aw, fabsf(bnb_ftz(u[k])));
        }
    }
    ax = group_max(ax, G);
    if (BASE) aw = group_max(aw, G);
    float rx = bnb_rcp(ax);
    float rw = BASE ? bnb_rcp(aw) : 0.0f;
    double dotX = 0.0, dotW = 0.0, d2 = 0.0;
    for (int c = 8 * lane; c < len; c += step) {
        int valid = min(8, len - c);
        float v[8], u[8];
        if (valid == 8) {
            load8<FMT>(x + rel + c, v);
            if (BASE) load8<FMT>(w + rel + c, u);
        } else {
            loadSome<FMT>(x + rel + c, valid, v);
            if (BASE) loadSome<FMT>(w + rel + c, valid, u);
        }
        int cx[8], cw[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            /* past the block's end v and u hold 0.0, as the kernel loads there: the padding nibble */
            cx[k] = fourbit_encode<FP4>(sThr, bnb_mul(v[k], rx));
            if (BASE) cw[k] = fourbit_encode<FP4>(sThr, bnb_mul(u[k], rw));
        }
        long long byte0 = (start + c) >> 1;
        if (valid == 8) {
            uint32_t wx = 0, ww = 0;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                wx |= (uint32_t)((cx[2 * k] << 4) | cx[2 * k + 1]) << (8 * k);
                if (BASE) ww |= (uint32_t)((cw[2 * k] << 4) | cw[2 * k + 1]) << (8 * k);
            }
            *reinterpret_cast<uint32_t *>(packedX + byte0) = wx;
            if (BASE) *reinterpret_cast<uint32_t *>(packedW + byte0) = ww;
        } else {
            for (int k = 0; 2 * k < valid; k++) {
                packedX[byte0 + k] = (unsigned char)((cx[2 * k] << 4) | cx[2 * k + 1]);
                if (BASE) packedW[byte0 + k] = (unsigned char)((cw[2 * k] << 4) | cw[2 * k + 1]);
            }
        }
        if (BASE) {
            for (int k = 0; k < valid; k++) {
                double wk = (double)u[k];
                double d = __dsub_rn(__dadd_rn(wk, p[rel + c + k]), wk);
                dotX = __fma_rn((double)sVal[cx[k]], d, dotX);
                dotW = __fma_rn((double)sVal[cw[k]], d, dotW);
                d2 = __fma_rn(d, d, d2);
            }
        }
    }
    if (BASE) {
        dotX = group_sum(dotX, G);
        dotW = group_sum(dotW, G);
        d2 = group_sum(d2, G);
    }
    if (active && lane == 0) {
        long long b = start >> bsShift;
        absmaxX[b] = ax;
        if (BASE) {
            absmaxW[b] = aw;
            sums[3 * b] = dotX;
            sums[3 * b + 1] = dotW;
            sums[3 * b + 2] = d2;
        }
    }
}

/*
 * nf4_requant_{bf16,f16,f32}(x, w, p, first, count, blocksize, packedX, packedW, absmaxX, absmaxW, sums)
 *   The merged elements [first, first + count) of a weight (first on a block boundary; count
 *   whole blocks or up to the end of the weight): x the merged values X (D bits), w the
 *   dequantized base W (D bits), p the fp64 product s*U*V^T of the same elements (row-major,
 *   contiguous); x, w and p 16-byte aligned. Quantizes X and W blockwise into the whole-weight
 *   arrays packedX, packedW (byte index e / 2), absmaxX, absmaxW (index e / blocksize), and per
 *   block b writes sums[3b..3b+2] = sum NF4[QX_i]*dW_i, sum NF4[QW_i]*dW_i, sum dW_i^2 with
 *   dW_i = (W_i + P_i) - W_i in fp64 (the figures of Nf4Requantizer; a sum order of its own).
 *   Launch: 256 threads a block, ceil(blocks * min(32, blocksize / 8) / 256) blocks.
 */
#define LM_NF4_REQUANT_KERNEL(NAME, FMT, T, FP4)                                                                   \
    extern "C" __global__ void NAME(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p, \
                                    long long first, long long count, long long blocksize, unsigned char *packedX,  \
                                    unsigned char *packedW, float *absmaxX, float *absmaxW, double *sums) {         \
        nf4_requant<FMT, T, true, FP4>(x, w, p, first, count, blocksize, packedX, packedW, absmaxX, absmaxW, sums); \
    }
LM_NF4_REQUANT_KERNEL(nf4_requant_bf16, LM_BF16, unsigned short, false)
LM_NF4_REQUANT_KERNEL(nf4_requant_f16, LM_F16, unsigned short, false)
LM_NF4_REQUANT_KERNEL(nf4_requant_f32, LM_F32, unsigned int, false)
/* fp4_requant_{bf16,f16,f32}: the same in bitsandbytes' FP4 code book (fp4_encode; FP4's values in the sums). */
LM_NF4_REQUANT_KERNEL(fp4_requant_bf16, LM_BF16, unsigned short, true)
LM_NF4_REQUANT_KERNEL(fp4_requant_f16, LM_F16, unsigned short, true)
LM_NF4_REQUANT_KERNEL(fp4_requant_f32, LM_F32, unsigned int, true)

/*
 * nf4_quantize_{bf16,f16,f32}(x, first, count, blocksize, packed, absmax)
 *   Plain blockwise quantization of elements [first, first + count) given in x (D bits), into
 *   the whole-weight arrays packed and absmax (as nf4_requant, without W and the sums).
 */
#define LM_NF4_QUANTIZE_KERNEL(NAME, FMT, T, FP4)                                                                   \
    extern "C" __global__ void NAME(const T *__restrict__ x, long long first, long long count, long long blocksize, \
                                    unsigned char *packed, float *absmax) {                                         \
        nf4_requant<FMT, T, false, FP4>(x, nullptr, nullptr, first, count, blocksize, packed, nullptr, absmax, nullptr, nullptr); \
    }
LM_NF4_QUANTIZE_KERNEL(nf4_quantize_bf16, LM_BF16, unsigned short, false)
LM_NF4_QUANTIZE_KERNEL(nf4_quantize_f16, LM_F16, unsigned short, false)
LM_NF4_QUANTIZE_KERNEL(nf4_quantize_f32, LM_F32, unsigned int, false)
/* fp4_quantize_{bf16,f16,f32}: the same in the FP4 code book. */
LM_NF4_QUANTIZE_KERNEL(fp4_quantize_bf16, LM_BF16, unsigned short, true)
LM_NF4_QUANTIZE_KERNEL(fp4_quantize_f16, LM_F16, unsigned short, true)
LM_NF4_QUANTIZE_KERNEL(fp4_quantize_f32, LM_F32, unsigned int, true)

/*
 * nf4_exponent_sums(a, n, sums)
 *   The exact sum of fp32 values, as integers: sums[e] += significand of every positive a_i of
 *   biased exponent e, sums[256 + e] likewise for negative ones (exponent 0: subnormals). The
 *   host rounds the exact sum once to fp32 and multiplies it by the fp32 factor 1/n
 *   (DoubleQuant.offsetOfSums): the double quantization offset, torch's fp32 mean() as
 *   bitsandbytes takes it wherever torch's partial sums are exact. Integer sums do not depend on
 *   the order of the atomics; torch's fp32 sum of many full-precision values does (its order
 *   follows the device's number of SMs), so no implementation matches it on every device.
 *   The host zeroes sums. Any grid; 256 threads a block.
 */
extern "C" __global__ void nf4_exponent_sums(const float *__restrict__ a, long long n, unsigned long long *sums) {
    __shared__ unsigned long long local[512];
    for (int k = threadIdx.x; k < 512; k += blockDim.x) local[k] = 0ull;
    __syncthreads();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        uint32_t bits = __float_as_uint(a[i]);
        uint32_t exp = (bits >> 23) & 0xffu;
        unsigned long long sig = exp == 0 ? (bits & 0x7fffffu) : ((bits & 0x7fffffu) | 0x800000u);
        if (sig != 0) atomicAdd(&local[(bits >> 31) * 256 + exp], sig);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < 512; k += blockDim.x) {
        if (local[k] != 0ull) atomicAdd(&sums[k], local[k]);
    }
}

/* DynamicMap.quantize: the CUDA kernel's binary search over a sorted 256-entry map, step for step. */
__device__ __forceinline__ int dyn_quantize(const float *map, float x) {
    int pivot = 127, upperPivot = 255, lowerPivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = map[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lowerPivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upperPivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = map[pivot];
    }
    if (upperPivot == 255) upper = map[upperPivot];
    if (lowerPivot == 0) lower = map[lowerPivot];
    if (x > val) {
        float midpoint = __fmul_rn(__fadd_rn(upper, val), 0.5f);
        return x > midpoint ? upperPivot : pivot;
    }
    float midpoint = __fmul_rn(__fadd_rn(lower, val), 0.5f);
    return x < midpoint ? lowerPivot : pivot;
}

/*
 * nf4_double_quant(absmax, n, offset, map, codes, nestedAbsmax)
 *   DoubleQuant.quantize given the offset: per nested block j of 256 absmax values,
 *   d_i = fl32(absmax_i - offset), nestedAbsmax[j] = max |ftz(d_i)|, codes[i] = dyn_quantize(map,
 *   bnb_mul(d_i, bnb_rcp(nestedAbsmax[j]))); a block whose nestedAbsmax is 0 gets NaN there, which
 *   the search sends to code 0. One block of 256 threads per nested block.
 */
extern "C" __global__ void nf4_double_quant(const float *__restrict__ absmax, long long n, float offset,
                                            const float *__restrict__ map, unsigned char *codes, float *nestedAbsmax) {
    __shared__ float smap[256];
    __shared__ float warpMax[NESTED_BLOCKSIZE / 32];
    smap[threadIdx.x] = map[threadIdx.x];
    long long i = (long long)blockIdx.x * NESTED_BLOCKSIZE + threadIdx.x;
    bool valid = i < n;
    float d = valid ? __fsub_rn(absmax[i], offset) : 0.0f;
    float m = warp_max(fabsf(bnb_ftz(d)));
    if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = m;
    __syncthreads();
    float na = 0.0f;
    for (int k = 0; k < NESTED_BLOCKSIZE / 32; k++) na = fmaxf(na, warpMax[k]);
    if (threadIdx.x == 0) nestedAbsmax[blockIdx.x] = na;
    if (!valid) return;
    codes[i] = (unsigned char)dyn_quantize(smap, bnb_mul(d, bnb_rcp(na)));
}

/*
 * nf4_measure_{bf16,f16,f32}(packedX, packedW, scaleX, scaleW, sums, n, blocksize, tile, out)
 *   The survival figures of Nf4Requantizer.measure, per tile of `tile` elements (a multiple of
 *   blocksize; one block of 256 threads per tile): out[4t..4t+3] = codes changed, sum D^2 with
 *   D = deq_D(QX) - deq_D(QW), sum_b scaleX_b*dotX_b - scaleW_b*dotW_b, sum_b d2_b, over the tile's
 *   elements and blocks (scales are the decoded absmax). The host adds the tiles in order.
 */
template <int FMT, bool FP4>
__device__ __forceinline__ void nf4_measure(const unsigned char *__restrict__ packedX, const unsigned char *__restrict__ packedW,
                                            const float *__restrict__ scaleX, const float *__restrict__ scaleW,
                                            const double *__restrict__ sums, long long n, long long blocksize, long long tile,
                                            double *out) {
    __shared__ double sh[3][256 / 32];
    __shared__ float sVal[16], sThr[16];
    fourbit_load_tables<FP4>(sVal, sThr);
    long long first = (long long)blockIdx.x * tile;
    long long end = min(n, first + tile);
    double changed = 0.0, sq = 0.0, dot = 0.0, d2 = 0.0;
    int shift = __ffsll(blocksize) - 1;
    for (long long e = first + threadIdx.x; e < end; e += blockDim.x) {
        long long b = e >> shift;
        int c = nf4_code_at(packedX, 0, e);
        int c0 = nf4_code_at(packedW, 0, e);
        double x = (double)widen_to_float<FMT>(nf4_dequant_bits<FMT>(sVal, c, scaleX[b]));
        double w = (double)widen_to_float<FMT>(nf4_dequant_bits<FMT>(sVal, c0, scaleW[b]));
        changed += c != c0 ? 1.0 : 0.0;
        double d = __dsub_rn(x, w);
        sq = __fma_rn(d, d, sq);
    }
    long long firstBlock = first / blocksize;
    long long endBlock = (end + blocksize - 1) / blocksize;
    for (long long b = firstBlock + threadIdx.x; b < endBlock; b += blockDim.x) {
        dot += __dsub_rn(__dmul_rn((double)scaleX[b], sums[3 * b]), __dmul_rn((double)scaleW[b], sums[3 * b + 1]));
        d2 += sums[3 * b + 2];
    }
    /* changed is an exact integer in a double (< 2^53); reduce the four in a fixed order */
    changed = warp_sum(changed);
    sq = warp_sum(sq);
    dot = warp_sum(dot);
    d2 = warp_sum(d2);
    __shared__ double shChanged[256 / 32];
    int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        shChanged[warp] = changed;
        sh[0][warp] = sq;
        sh[1][warp] = dot;
        sh[2][warp] = d2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double a = 0.0, s = 0.0, t = 0.0, u = 0.0;
        for (int k = 0; k < (int)(blockDim.x >> 5); k++) {
            a += shChanged[k];
            s += sh[0][k];
            t += sh[1][k];
            u += sh[2][k];
        }
        out[4 * blockIdx.x] = a;
        out[4 * blockIdx.x + 1] = s;
        out[4 * blockIdx.x + 2] = t;
        out[4 * blockIdx.x + 3] = u;
    }
}

#define LM_NF4_MEASURE_KERNEL(NAME, FMT, FP4)                                                                             \
    extern "C" __global__ void NAME(const unsigned char *__restrict__ packedX, const unsigned char *__restrict__ packedW, \
                                    const float *__restrict__ scaleX, const float *__restrict__ scaleW,                  \
                                    const double *__restrict__ sums, long long n, long long blocksize, long long tile,   \
                                    double *out) {                                                                        \
        nf4_measure<FMT, FP4>(packedX, packedW, scaleX, scaleW, sums, n, blocksize, tile, out);                          \
    }
LM_NF4_MEASURE_KERNEL(nf4_measure_bf16, LM_BF16, false)
LM_NF4_MEASURE_KERNEL(nf4_measure_f16, LM_F16, false)
LM_NF4_MEASURE_KERNEL(nf4_measure_f32, LM_F32, false)
/* fp4_measure_{bf16,f16,f32}: the same for codes of the FP4 code book. */
LM_NF4_MEASURE_KERNEL(fp4_measure_bf16, LM_BF16, true)
LM_NF4_MEASURE_KERNEL(fp4_measure_f16, LM_F16, true)
LM_NF4_MEASURE_KERNEL(fp4_measure_f32, LM_F32, true)
