/*
 * Dequantization on the device of the quantized bases besides bitsandbytes' 4-bit ones (nf4.cu):
 * FP8 (transformers' fine-grained layout and compressed-tensors' float-quantized one), bitsandbytes
 * LLM.int8, GPTQ and AWQ; and the requantization of merged FP8 and LLM.int8 weights into their own
 * format (fp8_requant, int8_requant, at the end of the file). Each kernel reads one row block of a weight as the pipeline uploads it
 * (the stored codes, untouched) and writes W, the values the CPU codec computes, bit for bit, in
 * the merge's dtype D (the weight's dequantized dtype), row-major [rowCount, cols]: the merge's
 * working copy of W, as nf4_dequant_* writes it. The per-tensor metadata (scales, zero points,
 * g_idx) is uploaded once per weight, decoded by the host exactly as the CPU codec decodes it
 * (e8m0/bf16/f16 scales to fp32, GPTQ v1 zeros plus one with the word's carries), so a kernel
 * only indexes it.
 *
 * Every rounded fp32 operation is written with an explicit rounding intrinsic (__fmul_rn,
 * __fadd_rn): nvcc may not contract those into an FMA, so each product is rounded exactly where
 * the CPU rounds it.
 *
 *   FP8 (Fp8Weight.value): RN_D(RN_P(code * scale)), P the product dtype. The product of an fp8
 *     value (4 significant bits) and an fp32 scale is exact in fp64; for P = F32, __fmul_rn is
 *     that product rounded once, and rounding the fp32 to D (floats.cuh) is the second rounding;
 *     for P = BF16 or F16 (compressed-tensors with 16-bit scales) both roundings are
 *     rounding.cuh's, from the exact fp64 product. NaN codes give D's canonical NaN.
 *   LLM.int8 (BnbInt8Format.Int8Weight.value): fl32(fl32(q * SCB[row]) * fl32(1/127)), D = F32.
 *   GPTQ/AWQ (PackedIntWeight.value): RN_D((q - z) * s), z the decoded zero point and s the
 *     scale of (g_idx[column], row), D the scales' dtype: |q - z| < 2^8 and a 16-bit scale make
 *     the product exact in fp32 (bf16 scales included: a multiple of 2^-133, at most 16
 *     significant bits), so __fmul_rn is the exact product and the one rounding is to D; for fp32
 *     scales __fmul_rn is the exact product rounded once, which is RN_F32 of the CPU's exact fp64
 *     product.
 */
#include "floats.cuh"
#include "fastmath.cuh"

/* bitsandbytes' 1/127, the decimal 7.874015718698502e-3 as fp32 (BnbInt8Format.INV127). */
#define INT8_INV127 0x1.020408p-7f

/* The value kinds of scaled_dequant. */
#define KIND_E4M3 0
#define KIND_E5M2 1
#define KIND_INT8 2

/* a / b for 0 <= a, 0 < b: a 32-bit division where both fit (most row blocks), else a 64-bit one. */
__device__ __forceinline__ long long div_nonneg(long long a, long long b) {
    return ((unsigned long long)(a | b) >> 32) == 0 ? (long long)((unsigned int)a / (unsigned int)b) : a / b;
}

/*
 * e4m3fn byte to fp32, exactly (Fp8Codec.decodeE4M3): bias 7, no infinities, S.1111.111 NaN, subnormals m * 2^-9.
 * Without branches: the magnitude's bits placed under fp32's exponent and mantissa read as 2^(e - 127) * 1.m (or, for
 * e = 0, the fp32 subnormal m * 2^-129), so one exact product by 2^120 gives 2^(e - 7) * 1.m (m * 2^-9).
 */
__device__ __forceinline__ float e4m3_value(uint32_t b) {
    uint32_t mag = b & 0x7fu;
    float v = __fmul_rn(__uint_as_float(mag << 20), 0x1p120f);
    return mag == 0x7fu ? __uint_as_float(0x7fc00000u) : __uint_as_float(((b & 0x80u) << 24) | __float_as_uint(v));
}

/*
 * e5m2 byte to fp32, exactly (Fp8Codec.decodeE5M2): bias 15, exponent 31 infinity (m = 0) or NaN, subnormals m * 2^-16;
 * the finite ones as e4m3_value, by 2^112.
 */
__device__ __forceinline__ float e5m2_value(uint32_t b) {
    uint32_t mag = b & 0x7fu;
    uint32_t sign = (b & 0x80u) << 24;
    float v = __fmul_rn(__uint_as_float(mag << 21), 0x1p112f);
    return mag > 0x7cu ? __uint_as_float(0x7fc00000u) : __uint_as_float(sign | (mag == 0x7cu ? 0x7f800000u : __float_as_uint(v)));
}

/*
 * RN_D(RN_P(v * s)) for a 16-bit product dtype P (productFmt): both roundings rounding.cuh's, from
 * the exact fp64 product. A call, not inlined into every element of a run: the double rounding is
 * long, and only compressed-tensors' 16-bit scales take it.
 */
__device__ __noinline__ uint32_t product16_bits(float v, float s, int productFmt, int fmt) {
    double p = __dmul_rn((double)v, (double)s); /* exact */
    double first = productFmt == LM_BF16 ? lm_round_to(p, 8, -126, LM_BF16_MAX) : lm_round_to(p, 11, -14, LM_F16_MAX);
    return lm_round_bits(first, fmt);
}

/*
 * The D bits of stored byte b with scale s (see the file's comment). F32P: the product dtype is
 * F32 (int8, and FP8 with e8m0 or fp32 scales), else productFmt, LM_BF16 or LM_F16 (FP8 only):
 * a template parameter, so that the common F32 product takes no branch per element.
 */
template <int KIND, int FMT, bool F32P>
__device__ __forceinline__ uint32_t scaled_bits(uint32_t b, float s, int productFmt) {
    if (KIND == KIND_INT8) {
        return round_float<FMT>(__fmul_rn(__fmul_rn((float)(int)(signed char)b, s), INT8_INV127));
    }
    float v = KIND == KIND_E5M2 ? e5m2_value(b) : e4m3_value(b);
    if (F32P) return round_float<FMT>(__fmul_rn(v, s));
    return product16_bits(v, s, productFmt, FMT);
}

/*
 * VEC consecutive codes of one row, elements e.. at column c (a multiple of VEC; codes + e aligned
 * to VEC bytes, out + e to 16 bytes), to D, in one load of the codes: 16 codes and two 16-byte
 * stores for 16-bit D, 4 codes and one 16-byte store for F32. Measured on an H200
 * (benchmarks/RESULTS.md): F32 output in runs of 16 (four stores a thread, 64 bytes apart) ran
 * int8 at 0.47 of the copy's traffic, in runs of 4 (a warp's store covers 512 consecutive bytes)
 * at 0.82; 16-bit output in runs of 8 ran FP8 at 0.50 against 0.65 in runs of 16 (a run's row,
 * column and scale group, 64-bit divisions, found once for twice the codes). The run's scale
 * group found once; when a group of columns ends inside the run (groups narrower than VEC, or not
 * a multiple of it), the scale is switched there.
 */
template <int KIND, int FMT, bool F32P, int VEC, typename T>
__device__ __forceinline__ void scaled_run(const unsigned char *__restrict__ codes, long long e, long long c,
                                           const float *__restrict__ rowScales, long long blockCols, int productFmt,
                                           T *__restrict__ out) {
    static_assert(VEC == (sizeof(T) == 2 ? 16 : 4), "16 codes a run for 16-bit D, 4 for F32");
    uint32_t u[4] = {0u, 0u, 0u, 0u};
    if (VEC == 16) {
        uint4 q = *reinterpret_cast<const uint4 *>(codes + e);
        u[0] = q.x;
        u[1] = q.y;
        u[2] = q.z;
        u[3] = q.w;
    } else {
        u[0] = *reinterpret_cast<const uint32_t *>(codes + e);
    }
    long long g = div_nonneg(c, blockCols);
    long long next = (g + 1) * blockCols; /* the first column of the next group */
    float s = rowScales[g];
    uint32_t bits[VEC];
    if (c + VEC <= next) { /* one scale for the whole run: every scheme but groups narrower than the run */
#pragma unroll
        for (int k = 0; k < VEC; k++) bits[k] = scaled_bits<KIND, FMT, F32P>((u[k >> 2] >> (8 * (k & 3))) & 0xffu, s, productFmt);
    } else {
#pragma unroll
        for (int k = 0; k < VEC; k++) {
            if (c + k == next) { /* a group of columns ends inside the run */
                g++;
                next += blockCols;
                s = rowScales[g];
            }
            bits[k] = scaled_bits<KIND, FMT, F32P>((u[k >> 2] >> (8 * (k & 3))) & 0xffu, s, productFmt);
        }
    }
#pragma unroll
    for (int m = 0; m < VEC * (int)sizeof(T) / 16; m++) {
        if (sizeof(T) == 2) {
            const uint32_t *b = bits + 8 * m;
            *reinterpret_cast<uint4 *>(out + e + 8 * m) =
                make_uint4(b[0] | (b[1] << 16), b[2] | (b[3] << 16), b[4] | (b[5] << 16), b[6] | (b[7] << 16));
        } else {
            *reinterpret_cast<uint4 *>(out + e) = make_uint4(bits[0], bits[1], bits[2], bits[3]);
        }
    }
}

/*
 * Byte codes with a scale per block of blockRows x blockCols elements (FP8: one scale with
 * blockRows >= rows and blockCols = cols, one a row with 1 x cols, one per group of columns with
 * 1 x g, 128 x 128 blocks; int8: 1 x cols, SCB). Elements [0, rowCount * cols) of the block,
 * rows row0.. of the weight; the scale of (row, col) is scales[(row / blockRows) * scaleCols +
 * col / blockCols]. A thread takes a run of VEC elements of one row (scaled_run: 16 for 16-bit
 * D, 4 for F32) when cols is a multiple of VEC; otherwise one element. The row,
 * column and scale row of a run are computed once for its VEC elements. Grid-stride, any grid.
 */
template <int KIND, int FMT, bool F32P, int VEC, typename T>
__device__ __forceinline__ void scaled_runs(const unsigned char *__restrict__ codes, long long rowCount, long long cols,
                                            long long row0, const float *__restrict__ scales, long long blockRows,
                                            long long blockCols, long long scaleCols, int productFmt, T *__restrict__ out) {
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long threads = (long long)gridDim.x * blockDim.x;
    long long runs = rowCount * cols / VEC;
    for (long long v = tid; v < runs; v += threads) {
        long long e = v * VEC;
        long long r = div_nonneg(e, cols);
        long long c = e - r * cols;
        const float *rowScales = scales + div_nonneg(row0 + r, blockRows) * scaleCols;
        scaled_run<KIND, FMT, F32P, VEC, T>(codes, e, c, rowScales, blockCols, productFmt, out);
    }
}

template <int KIND, int FMT, bool F32P, typename T>
__device__ __forceinline__ void scaled_dequant(const unsigned char *__restrict__ codes, long long rowCount, long long cols,
                                               long long row0, const float *__restrict__ scales, long long blockRows,
                                               long long blockCols, long long scaleCols, int productFmt, T *__restrict__ out) {
    constexpr int VEC = sizeof(T) == 2 ? 16 : 4;
    if ((cols & (VEC - 1)) == 0) {
        scaled_runs<KIND, FMT, F32P, VEC, T>(codes, rowCount, cols, row0, scales, blockRows, blockCols, scaleCols, productFmt, out);
        return;
    }
    long long n = rowCount * cols;
    long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long threads = (long long)gridDim.x * blockDim.x;
    for (long long e = tid; e < n; e += threads) {
        long long r = div_nonneg(e, cols);
        long long c = e - r * cols;
        float s = scales[div_nonneg(row0 + r, blockRows) * scaleCols + div_nonneg(c, blockCols)];
        out[e] = (T)scaled_bits<KIND, FMT, F32P>(codes[e], s, productFmt);
    }
}

/*
 * fp8_dequant_{bf16,f16,f32}(codes, rowCount, cols, row0, scales, blockRows, blockCols, scaleCols, e5m2, productFmt, out)
 *   An FP8 block (e4m3fn codes, e5m2 when e5m2 != 0) to D; productFmt LM_F32 (0 BF16, 1 F16, 2 F32,
 *   rounding.cuh's codes) for transformers' layout and e8m0 or fp32 scales, else the 16-bit scales' dtype.
 *   codes and out 16-byte aligned. 256 threads a block (built for 5 blocks an SM: 48 registers);
 *   grid: ceil(work / 256), work = n / VEC when cols % VEC == 0 (VEC = 16 for 16-bit D, 4 for F32), else n;
 *   a smaller grid strides.
 * int8_dequant_f32(codes, rowCount, cols, row0, scb, out)
 *   An LLM.int8 block to F32 with each row's SCB (scb of the whole weight). Launched as fp8_dequant.
 */
#define LM_FP8_DEQUANT_KERNEL(NAME, FMT, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(256, 5)                                                             \
        NAME(const unsigned char *__restrict__ codes, long long rowCount, long long cols, long long row0,              \
             const float *__restrict__ scales, long long blockRows, long long blockCols, long long scaleCols, int e5m2, \
             int productFmt, T *__restrict__ out) {                                                                    \
        bool f32p = productFmt == LM_F32;                                                                              \
        if (e5m2 && f32p) {                                                                                            \
            scaled_dequant<KIND_E5M2, FMT, true, T>(codes, rowCount, cols, row0, scales, blockRows, blockCols,        \
                                                    scaleCols, productFmt, out);                                       \
        } else if (e5m2) {                                                                                             \
            scaled_dequant<KIND_E5M2, FMT, false, T>(codes, rowCount, cols, row0, scales, blockRows, blockCols,       \
                                                     scaleCols, productFmt, out);                                      \
        } else if (f32p) {                                                                                             \
            scaled_dequant<KIND_E4M3, FMT, true, T>(codes, rowCount, cols, row0, scales, blockRows, blockCols,        \
                                                    scaleCols, productFmt, out);                                       \
        } else {                                                                                                       \
            scaled_dequant<KIND_E4M3, FMT, false, T>(codes, rowCount, cols, row0, scales, blockRows, blockCols,       \
                                                     scaleCols, productFmt, out);                                      \
        }                                                                                                              \
    }
LM_FP8_DEQUANT_KERNEL(fp8_dequant_bf16, LM_BF16, unsigned short)
LM_FP8_DEQUANT_KERNEL(fp8_dequant_f16, LM_F16, unsigned short)
LM_FP8_DEQUANT_KERNEL(fp8_dequant_f32, LM_F32, unsigned int)

extern "C" __global__ void int8_dequant_f32(const unsigned char *__restrict__ codes, long long rowCount, long long cols, long long row0,
                                            const float *__restrict__ scb, unsigned int *__restrict__ out) {
    scaled_dequant<KIND_INT8, LM_F32, true, unsigned int>(codes, rowCount, cols, row0, scb, 1, cols, 1, LM_F32, out);
}

/*
 * q - z as fp32, exactly, for |q - z| < 2^22 (codes and zero points of at most 8 bits): the integer
 * added to the significand of 1.5 * 2^23 and that subtracted, two full-rate operations in place of
 * a conversion (I2F, a quarter of the rate); (float)0 and 0 are both +0.0.
 */
__device__ __forceinline__ float small_int_value(int x) {
    return __fadd_rn(__uint_as_float(0x4b400000u + (uint32_t)x), -0x1.8p23f);
}

/* The exact (fp32) or once-rounded (q - z) * s of a GPTQ/AWQ code (see the file's comment). */
__device__ __forceinline__ float packed_product(int q, int z, float s) {
    return __fmul_rn(small_int_value(q - z), s);
}

/*
 * packed_product for a 16-bit D (so a 16-bit scale s) with 0 < s < 2^124, from mzs = -(z * s): q * s
 * and z * s are exact in fp32 (at most 4 + 11 significant bits, a multiple of s's last bit, and
 * below 16 * 2^124, so finite), and so is their difference (q - z) * s, which fma(q, s, mzs) then
 * returns unrounded, as packed_product does; a zero difference is +0.0 in both (s > 0). (A BF16
 * scale past 2^124 could make z * s overflow to infinity where (q - z) * s does not.) One fused
 * operation instead of an integer subtraction and a product.
 */
__device__ __forceinline__ float packed_product_positive(int q, float s, float mzs) {
    return __fmaf_rn(small_int_value(q), s, mzs);
}

/* store_rounded of 8 values that are not NaN (16-bit D): no canonical-NaN selects. */
template <int FMT, typename T>
__device__ __forceinline__ void store_rounded_finite8(T *p, const float *v) {
    uint32_t h[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        if (FMT == LM_F16) {
            __half2 x = __floats2half2_rn(v[2 * k], v[2 * k + 1]);
            h[k] = (uint32_t)__half_as_ushort(__low2half(x)) | ((uint32_t)__half_as_ushort(__high2half(x)) << 16);
        } else {
            uint32_t a = __float_as_uint(v[2 * k]), b = __float_as_uint(v[2 * k + 1]);
            h[k] = ((a + 0x7fffu + ((a >> 16) & 1u)) >> 16) | (((b + 0x7fffu + ((b >> 16) & 1u)) >> 16) << 16);
        }
    }
    *reinterpret_cast<uint4 *>(p) = make_uint4(h[0], h[1], h[2], h[3]);
}

/*
 * Two fp32 values rounded once to 16-bit D, a in the low half: round_float of each; for F16 one
 * paired conversion (cvt.rn.f16x2.f32, the same round to nearest even as __float2half_rn) in place
 * of two, a NaN then replaced by the canonical one as round_float does.
 */
template <int FMT>
__device__ __forceinline__ uint32_t round_pair(float a, float b) {
    if (FMT == LM_F16) {
        __half2 h = __floats2half2_rn(a, b);
        uint32_t lo = isnan(a) ? 0x7e00u : (uint32_t)__half_as_ushort(__low2half(h));
        uint32_t hi = isnan(b) ? 0x7e00u : (uint32_t)__half_as_ushort(__high2half(h));
        return lo | (hi << 16);
    }
    return round_float<FMT>(a) | (round_float<FMT>(b) << 16);
}

/*
 * N fp32 products (4, 8 or 16) rounded to D and stored at p: N / 8 16-byte stores for 16-bit D (one
 * 8-byte store for N = 4), N / 4 for F32; p aligned to the store.
 */
template <int FMT, int N, typename T>
__device__ __forceinline__ void store_rounded(T *p, const float *v) {
    if (sizeof(T) == 2 && N == 4) {
        *reinterpret_cast<uint2 *>(p) = make_uint2(round_pair<FMT>(v[0], v[1]), round_pair<FMT>(v[2], v[3]));
    } else if (sizeof(T) == 2) {
#pragma unroll
        for (int m = 0; m < N / 8; m++) {
            const float *f = v + 8 * m;
            reinterpret_cast<uint4 *>(p)[m] = make_uint4(round_pair<FMT>(f[0], f[1]), round_pair<FMT>(f[2], f[3]),
                                                         round_pair<FMT>(f[4], f[5]), round_pair<FMT>(f[6], f[7]));
        }
    } else {
#pragma unroll
        for (int m = 0; m < N / 4; m++) {
            const float *f = v + 4 * m;
            reinterpret_cast<uint4 *>(p)[m] = make_uint4(round_float<FMT>(f[0]), round_float<FMT>(f[1]), round_float<FMT>(f[2]),
                                                         round_float<FMT>(f[3]));
        }
    }
}

#define TILE 32

/*
 * GPTQ: the block's words as the host gathers them from qweight [cols / PER, rows] (PER = 32 /
 * BITS input columns a word, column i of row o at bit (i % PER) * BITS of word (i / PER, o)):
 * words[p * rowCount + o], p < cols / PER, o < rowCount (rows row0.. of the weight). A block of
 * 32 x 8 threads takes tiles of 32 rows x 32 words: it reads them along the rows (coalesced),
 * transposes them in shared memory, and each thread then decodes one word into PER consecutive
 * elements of one row, stored at once, so a warp writes 32 * PER consecutive elements of a row.
 * A thread decodes the same word index p for 4 rows of the tile: it checks once whether p's
 * columns are one group (g_idx; always so without act-order when the group size is a multiple
 * of PER), and then reads the zero and scale of its 4 rows while the tile's words load, so that
 * the decoding waits on no further load; else, per row, a group's zero and scale are read for
 * each run of columns of that group.
 */
template <int BITS, int FMT, typename T>
__device__ __forceinline__ void gptq_tiles(const uint32_t *__restrict__ words, long long rowCount, long long cols, long long row0,
                                           long long rows, const int *__restrict__ zeros, const float *__restrict__ scales,
                                           const int *__restrict__ gIdx, T *__restrict__ out, uint32_t (*sh)[TILE + 1]) {
    const int PER = 32 / BITS;
    const uint32_t mask = (1u << BITS) - 1u;
    long long packedRows = cols / PER;
    long long rowTiles = (rowCount + TILE - 1) / TILE;
    long long wordTiles = (packedRows + TILE - 1) / TILE;
    int tx = threadIdx.x;
    int ty = threadIdx.y;
    for (long long rt = blockIdx.x; rt < rowTiles; rt += gridDim.x) {
        for (long long wt = blockIdx.y; wt < wordTiles; wt += gridDim.y) {
            uint32_t loaded[TILE / 8];
#pragma unroll
            for (int k = 0; k < TILE / 8; k++) {
                long long p = wt * TILE + ty + 8 * k;
                long long o = rt * TILE + tx;
                loaded[k] = p < packedRows && o < rowCount ? words[p * rowCount + o] : 0u;
            }
            /* the word this thread decodes, for rows rt * TILE + ty + 8k */
            long long p = wt * TILE + tx;
            bool inside = p < packedRows;
            /* whether the word's PER columns are one group: 16-byte loads of their g_idx (p * PER ints from a 256-byte aligned array) */
            const int *wordGroups = gIdx + p * PER;
            int group0 = 0;
            bool oneGroup = true;
            if (inside) {
                group0 = wordGroups[0];
#pragma unroll
                for (int m = 0; m < PER / 4; m++) {
                    int4 g4 = reinterpret_cast<const int4 *>(wordGroups)[m];
                    oneGroup = oneGroup && g4.x == group0 && g4.y == group0 && g4.z == group0 && g4.w == group0;
                }
            }
            int zk[TILE / 8];
            float sk[TILE / 8];
#pragma unroll
            for (int k = 0; k < TILE / 8; k++) {
                long long o = rt * TILE + ty + 8 * k;
                bool load = inside && oneGroup && o < rowCount;
                long long kk = load ? (long long)group0 * rows + row0 + o : 0;
                zk[k] = load ? zeros[kk] : 0;
                sk[k] = load ? scales[kk] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < TILE / 8; k++) sh[ty + 8 * k][tx] = loaded[k];
            __syncthreads();
#pragma unroll
            for (int k = 0; k < TILE / 8; k++) {
                int ox = ty + 8 * k;
                long long o = rt * TILE + ox;
                if (o < rowCount && inside) {
                    uint32_t word = sh[tx][ox];
                    float v[PER];
                    if (oneGroup) {
#pragma unroll
                        for (int j = 0; j < PER; j++) v[j] = packed_product((int)((word >> (j * BITS)) & mask), zk[k], sk[k]);
                    } else {
                        /* a group's zero and scale read once for its run of columns (act-order, or groups narrower than a word) */
                        long long row = row0 + o;
                        int group = group0;
                        long long kk = (long long)group * rows + row;
                        int z = zeros[kk];
                        float sc = scales[kk];
#pragma unroll
                        for (int j = 0; j < PER; j++) {
                            int gj = wordGroups[j];
                            if (gj != group) {
                                group = gj;
                                kk = (long long)group * rows + row;
                                z = zeros[kk];
                                sc = scales[kk];
                            }
                            v[j] = packed_product((int)((word >> (j * BITS)) & mask), z, sc);
                        }
                    }
                    store_rounded<FMT, PER>(out + o * cols + p * PER, v);
                }
            }
            __syncthreads();
        }
    }
}

/*
 * gptq_dequant_{bf16,f16,f32}(words, rowCount, cols, row0, rows, bits, zeros, scales, gIdx, out)
 *   A GPTQ block (words gathered as gptq_tiles says) to D. zeros and scales: every (group, row)
 *   of the weight, [groups, rows] (zeros decoded: v1's stored zero - 1 already corrected); gIdx:
 *   the group of every input column, 16-byte aligned. bits 2, 4 or 8; cols a multiple of 32 / bits;
 *   out 16-byte aligned. Launch: 32 x 8 threads (built for 4 blocks an SM: 64 registers), grid
 *   (ceil(rowCount / 32), ceil(cols / (32 / bits) / 32)) (each at most 65535; a smaller grid strides).
 */
#define LM_GPTQ_DEQUANT_KERNEL(NAME, FMT, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(256, 4)                                                             \
        NAME(const uint32_t *__restrict__ words, long long rowCount, long long cols, long long row0, long long rows,   \
             int bits, const int *__restrict__ zeros, const float *__restrict__ scales, const int *__restrict__ gIdx,  \
             T *__restrict__ out) {                                                                                    \
        __shared__ uint32_t sh[TILE][TILE + 1];                                                                        \
        if (bits == 2) gptq_tiles<2, FMT, T>(words, rowCount, cols, row0, rows, zeros, scales, gIdx, out, sh);        \
        else if (bits == 4) gptq_tiles<4, FMT, T>(words, rowCount, cols, row0, rows, zeros, scales, gIdx, out, sh);   \
        else gptq_tiles<8, FMT, T>(words, rowCount, cols, row0, rows, zeros, scales, gIdx, out, sh);                  \
    }
LM_GPTQ_DEQUANT_KERNEL(gptq_dequant_bf16, LM_BF16, unsigned short)
LM_GPTQ_DEQUANT_KERNEL(gptq_dequant_f16, LM_F16, unsigned short)
LM_GPTQ_DEQUANT_KERNEL(gptq_dequant_f32, LM_F32, unsigned int)

/*
 * awq_dequant_{bf16,f16,f32}(words, rowCount, cols, row0, rows, zeros, scales, gIdx, out)
 *   An AWQ (GEMM) block to D. qweight is [cols, rows / 8], word (i, w) holding column i of rows
 *   8w..8w+7, row 8w + c in nibble AWQ_NIBBLE[c] = {0, 4, 1, 5, 2, 6, 3, 7}[c] (the inverse of
 *   AWQ_ORDER). The host gathers the words that hold rows [row0, row0 + rowCount):
 *   words[i * wordCols + w], w < wordCols = ceil((row0 + rowCount) / 8) - floor(row0 / 8), word
 *   column floor(row0 / 8) + w; rows outside the block are skipped. zeros, scales and gIdx as
 *   gptq_dequant. A block of 32 x 8 threads takes tiles of AWQ_COLS (256) columns x 8 word
 *   columns (64 rows): it reads each column's 8 words (32 bytes) at once and stores them in
 *   shared memory by word column. Warp y then takes word column y of the tile: lane l decodes
 *   columns 8l..8l+7 (two 16-byte shared loads) for each of the word's 8 rows, into 8
 *   consecutive elements stored at once, so that each store instruction of a warp covers 512
 *   consecutive bytes of one row (16-bit D). (Tiles of 32 columns x 32 word columns, a warp
 *   writing 64 bytes of each of 8 rows, ran at 0.40 of the copy's traffic: benchmarks/RESULTS.md.)
 *   A lane reads the groups of its 8 columns once a tile and, when they are one group, the zero
 *   and scale of its 8 rows while the tile's words load. With a 16-bit D and a scale in (0, 2^124)
 *   (every real checkpoint) a row's 8 values are one fused product each
 *   (packed_product_positive) with no NaN to make canonical. Launch: 32 x 8 threads (built for 3
 *   blocks an SM: 80 registers; at 4 it spilled and ran 8% slower), grid (ceil(cols / 256),
 *   ceil(wordCols / 8)) (each at most 65535; a smaller grid strides).
 */
#define AWQ_COLS 256
#define AWQ_WORDS 8
#define AWQ_PAD 4 /* row stride 260 words: the loads' stores hit 32 banks, and rows stay 16-byte aligned */
template <int FMT, typename T>
__device__ __forceinline__ void awq_tiles(const uint32_t *__restrict__ words, long long rowCount, long long cols, long long row0,
                                          long long rows, const int *__restrict__ zeros, const float *__restrict__ scales,
                                          const int *__restrict__ gIdx, T *__restrict__ out,
                                          uint32_t (*sh)[AWQ_COLS + AWQ_PAD]) {
    long long firstWord = row0 >> 3;
    long long wordCols = ((row0 + rowCount + 7) >> 3) - firstWord;
    long long colTiles = (cols + AWQ_COLS - 1) / AWQ_COLS;
    long long wordTiles = (wordCols + AWQ_WORDS - 1) / AWQ_WORDS;
    int lane = threadIdx.x;
    int wy = threadIdx.y;
    int flat = wy * 32 + lane;
    int loadWord = flat & 7; /* the loads: 8 consecutive threads read one column's 8 words */
    int loadCol = flat >> 3;
    for (long long ct = blockIdx.x; ct < colTiles; ct += gridDim.x) {
        /* this lane's columns i0..i0+7 (those below cols) and their groups: the same for every word tile */
        long long i0 = ct * AWQ_COLS + 8 * lane;
        int width = cols - i0 >= 8 ? 8 : cols > i0 ? (int)(cols - i0) : 0;
        bool whole = width == 8 && (cols & 7) == 0; /* 8 columns, 16-byte aligned in out */
        int groups[8];
        if (whole) { /* 16-byte loads: i0 is a multiple of 8 */
#pragma unroll
            for (int m = 0; m < 2; m++) {
                int4 g4 = reinterpret_cast<const int4 *>(gIdx + i0)[m];
                groups[4 * m] = g4.x;
                groups[4 * m + 1] = g4.y;
                groups[4 * m + 2] = g4.z;
                groups[4 * m + 3] = g4.w;
            }
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) groups[j] = j < width ? gIdx[i0 + j] : 0;
        }
        bool oneGroup = width > 0;
#pragma unroll
        for (int j = 1; j < 8; j++) oneGroup = oneGroup && (j >= width || groups[j] == groups[0]);
        for (long long wt = blockIdx.y; wt < wordTiles; wt += gridDim.y) {
            uint32_t loaded[AWQ_COLS * AWQ_WORDS / 256];
#pragma unroll
            for (int k = 0; k < AWQ_COLS * AWQ_WORDS / 256; k++) {
                long long i = ct * AWQ_COLS + loadCol + 32 * k;
                long long w = wt * AWQ_WORDS + loadWord;
                loaded[k] = i < cols && w < wordCols ? words[i * wordCols + w] : 0u;
            }
            /* warp wy decodes word column w of the tile: rows 8 * (firstWord + w) + c, c < 8 */
            long long w = wt * AWQ_WORDS + wy;
            long long rowBase = (firstWord + w) << 3;
            int zk[8];
            float sk[8];
#pragma unroll
            for (int c = 0; c < 8; c++) {
                long long row = rowBase + c;
                bool load = oneGroup && w < wordCols && row >= row0 && row < row0 + rowCount;
                long long kk = load ? (long long)groups[0] * rows + row : 0;
                zk[c] = load ? zeros[kk] : 0;
                sk[c] = load ? scales[kk] : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < AWQ_COLS * AWQ_WORDS / 256; k++) sh[loadWord][loadCol + 32 * k] = loaded[k];
            __syncthreads();
            if (width > 0 && w < wordCols) {
                uint4 lo = *reinterpret_cast<const uint4 *>(&sh[wy][8 * lane]);
                uint4 hi = *reinterpret_cast<const uint4 *>(&sh[wy][8 * lane + 4]);
                uint32_t word[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
                for (int c = 0; c < 8; c++) {
                    long long row = rowBase + c;
                    if (row < row0 || row >= row0 + rowCount) continue;
                    /* nibble of row 8w + c: {0, 4, 1, 5, 2, 6, 3, 7}[c] = (c >> 1) + 4 * (c & 1) */
                    int shift = 4 * ((c >> 1) + 4 * (c & 1));
                    float v[8];
                    if (FMT != LM_F32 && oneGroup && whole && sk[c] > 0.0f && sk[c] < 0x1p124f) {
                        /* the common case: one product each, no NaN to make canonical (half the instructions) */
                        float mzs = -__fmul_rn(small_int_value(zk[c]), sk[c]);
#pragma unroll
                        for (int j = 0; j < 8; j++) v[j] = packed_product_positive((int)((word[j] >> shift) & 15u), sk[c], mzs);
                        store_rounded_finite8<FMT>(out + (row - row0) * cols + i0, v);
                        continue;
                    }
                    if (oneGroup) {
#pragma unroll
                        for (int j = 0; j < 8; j++) v[j] = packed_product((int)((word[j] >> shift) & 15u), zk[c], sk[c]);
                    } else {
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            long long kk = (long long)groups[j] * rows + row;
                            v[j] = j < width ? packed_product((int)((word[j] >> shift) & 15u), zeros[kk], scales[kk]) : 0.0f;
                        }
                    }
                    T *dst = out + (row - row0) * cols + i0;
                    if (whole) {
                        store_rounded<FMT, 8>(dst, v);
                    } else {
                        for (int j = 0; j < width; j++) dst[j] = (T)round_float<FMT>(v[j]);
                    }
                }
            }
            __syncthreads();
        }
    }
}

#define LM_AWQ_DEQUANT_KERNEL(NAME, FMT, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(256, 3)                                                             \
        NAME(const uint32_t *__restrict__ words, long long rowCount, long long cols, long long row0, long long rows,   \
             const int *__restrict__ zeros, const float *__restrict__ scales, const int *__restrict__ gIdx,            \
             T *__restrict__ out) {                                                                                    \
        __shared__ __align__(16) uint32_t sh[AWQ_WORDS][AWQ_COLS + AWQ_PAD];                                         \
        awq_tiles<FMT, T>(words, rowCount, cols, row0, rows, zeros, scales, gIdx, out, sh);                           \
    }
LM_AWQ_DEQUANT_KERNEL(awq_dequant_bf16, LM_BF16, unsigned short)
LM_AWQ_DEQUANT_KERNEL(awq_dequant_f16, LM_F16, unsigned short)
LM_AWQ_DEQUANT_KERNEL(awq_dequant_f32, LM_F32, unsigned int)

/*
 * Requantization on the device of a merged FP8 or LLM.int8 weight into its own format (merge
 * --to fp8, --to int8), bit for bit the CPU requantizers (Fp8Requantizer, BnbInt8Format's
 * Int8Requantizer), and the survival sums of each quantization block. The merge leaves a row
 * block's merged values X (D bits), its base values W (D bits) and P = s*U*V^T (fp64) row-major
 * on the device. A group of threads takes one quantization block at a time (grid-stride): the
 * whole block of RQ_THREADS threads when the quantization block is larger than RQ_WARP_MAX
 * elements (128 x 128 blocks), else one warp (rows of LLM.int8 and of FP8's per-row scales up to
 * RQ_WARP_MAX columns, groups of columns; runs of 8 only), so that small quantization blocks wait
 * at no barrier.
 * The group reads its quantization block twice, in runs of 8 elements of a row (16-byte loads of
 * X, W and P; 8 codes stored at once) when rows and blocks are multiples of 8 wide and the arrays
 * aligned, else element by element: first the absmax of X and of W (warp shuffles, then shared
 * memory across the warps), then the codes and the sums (the second read of X and W mostly from
 * the cache). Per quantization block q (numbered over the whole weight, row of blocks by row of
 * blocks) it writes the scale and sums[5q..5q+4] = codes changed, sum D^2, sum D*dW, sum dW^2 and
 * the count of merged values the format cannot take (the host then lets the CPU requantizer raise
 * its error), with dW = (W + P) - W in fp64, the CPU engine's v - w, and D = deq(QX) - deq(QW);
 * the host adds them in order (the CPU's sums in another order: equal to about 1e-12 relative;
 * the counts are exact, and so is every code and scale, whatever the grid).
 */
#define RQ_THREADS 256
#define E4M3_MAX 448.0f
#define F16_MAX 65504.0f

/* The e4m3fn code nearest |x| <= 448 (Fp8Codec.encodeE4M3): ties to the even code, the sign kept (-0.0 is 0x80), NaN 0x7F. */
__device__ __forceinline__ uint32_t e4m3_code(float x) {
    uint32_t b = __float_as_uint(x);
    uint32_t a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return 0x7fu;
    uint32_t sign = (b >> 24) & 0x80u;
    if (a < 0x3c800000u) {
        /* below 2^-6, the smallest normal: the subnormal codes m * 2^-9, m = 0..8 (8 is 2^-6, code 0x08); x * 2^9 is exact */
        return sign | (uint32_t)rintf(__fmul_rn(__uint_as_float(a), 512.0f));
    }
    /* (exponent + 7) << 3 | the top 3 significand bits; one more when the rest is above half, or half and the code odd:
     * the codes are in the values' order, so the carry of a code m = 7 into the next exponent is the next code */
    uint32_t code = ((a >> 23) - 120u) << 3 | ((a >> 20) & 7u);
    uint32_t rest = a & 0xfffffu;
    return sign | (code + (rest > 0x80000u || (rest == 0x80000u && (code & 1u)) ? 1u : 0u));
}

/* Java's Math.max(-448, Math.min(448, s)): NaN and -0.0 pass unchanged. */
__device__ __forceinline__ float e4m3_clamp(float s) {
    return s > E4M3_MAX ? E4M3_MAX : s < -E4M3_MAX ? -E4M3_MAX : s;
}

/* The value the requantized model holds for code q with inverse scale inv (Fp8Requantizer.dequantize): RN_D(fl32(e4m3(q) * inv)). */
template <int FMT>
__device__ __forceinline__ double e4m3_dequant(uint32_t q, float inv) {
    return (double)widen_to_float<FMT>(round_float<FMT>(__fmul_rn(e4m3_value(q), inv)));
}

/* An fp32 value rounded to fp16 and back (FloatFormat.F16.round of the float): overflow gives infinity. */
__device__ __forceinline__ float f16_round(float v) {
    return __half2float(__float2half_rn(v));
}

#define RQ_WARPS (RQ_THREADS / 32)
/* Quantization blocks of at most this many elements are taken by one warp, larger ones by the whole block. */
#define RQ_WARP_MAX 2048

/* Eight D values as fp32 from p (16-byte aligned): one 16-byte load for 16-bit D, two for F32. */
template <int FMT, typename T>
__device__ __forceinline__ void rq_load8(const T *__restrict__ p, float v[8]) {
    if (sizeof(T) == 2) {
        uint4 u = *reinterpret_cast<const uint4 *>(p);
        uint32_t q[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            v[2 * k] = widen_to_float<FMT>(q[k] & 0xffffu);
            v[2 * k + 1] = widen_to_float<FMT>(q[k] >> 16);
        }
    } else {
        uint4 a = *reinterpret_cast<const uint4 *>(p);
        uint4 b = *reinterpret_cast<const uint4 *>(p + 4);
        uint32_t q[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = widen_to_float<FMT>(q[k]);
    }
}

/* A run of VEC (8 or 1) consecutive D values as fp32; for VEC = 8, p 16-byte aligned. */
template <int FMT, int VEC, typename T>
__device__ __forceinline__ void rq_load(const T *__restrict__ p, float v[VEC]) {
    if (VEC == 8) {
        rq_load8<FMT, T>(p, v);
    } else {
        v[0] = widen_to_float<FMT>((uint32_t)p[0]);
    }
}

/* A run of VEC fp64 values of P: four 16-byte loads for VEC = 8. */
template <int VEC>
__device__ __forceinline__ void rq_load_p(const double *__restrict__ p, double d[VEC]) {
    if (VEC == 8) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            double2 t = reinterpret_cast<const double2 *>(p)[k];
            d[2 * k] = t.x;
            d[2 * k + 1] = t.y;
        }
    } else {
        d[0] = p[0];
    }
}

/* A run of VEC codes (bytes): one 8-byte store for VEC = 8 (codes 8-byte aligned). */
template <int VEC>
__device__ __forceinline__ void rq_store_codes(unsigned char *__restrict__ codes, const uint32_t *q) {
    if (VEC == 8) {
        uint32_t lo = q[0] | (q[1] << 8) | (q[2] << 16) | (q[3] << 24);
        uint32_t hi = q[4] | (q[5] << 8) | (q[6] << 16) | (q[7] << 24);
        *reinterpret_cast<uint2 *>(codes) = make_uint2(lo, hi);
    } else {
        codes[0] = (unsigned char)q[0];
    }
}

/*
 * The maxima of a and b over a group of LANES threads (32: a warp; RQ_THREADS: the block, every
 * thread of which calls this): every thread of the group gets both. fmaxf of absolute values is
 * the same in any order.
 */
template <int LANES>
__device__ __forceinline__ void rq_max2(float *a, float *b, float (*sh)[RQ_WARPS]) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        *a = fmaxf(*a, __shfl_xor_sync(0xffffffffu, *a, o));
        *b = fmaxf(*b, __shfl_xor_sync(0xffffffffu, *b, o));
    }
    if (LANES == 32) return;
    int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
        sh[0][warp] = *a;
        sh[1][warp] = *b;
    }
    __syncthreads();
    float ma = sh[0][0], mb = sh[1][0];
#pragma unroll
    for (int k = 1; k < RQ_WARPS; k++) {
        ma = fmaxf(ma, sh[0][k]);
        mb = fmaxf(mb, sh[1][k]);
    }
    __syncthreads();
    *a = ma;
    *b = mb;
}

/* The sums of the group's five values (a fixed order: xor-shuffles, then the warps in order), into out[0..4] by its first thread. */
template <int LANES>
__device__ __forceinline__ void rq_sums(double v[5], double (*sh)[RQ_WARPS], double *out) {
#pragma unroll
    for (int k = 0; k < 5; k++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v[k] = __dadd_rn(v[k], __shfl_xor_sync(0xffffffffu, v[k], o));
    }
    if (LANES == 32) {
        if ((threadIdx.x & 31) == 0) {
#pragma unroll
            for (int k = 0; k < 5; k++) out[k] = v[k];
        }
        return;
    }
    int warp = threadIdx.x >> 5;
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int k = 0; k < 5; k++) sh[k][warp] = v[k];
    }
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int k = 0; k < 5; k++) {
            double t = sh[k][0];
#pragma unroll
            for (int j = 1; j < RQ_WARPS; j++) t = __dadd_rn(t, sh[k][j]);
            out[k] = t;
        }
    }
    __syncthreads();
}

/* The shared memory of the block-wide reductions. */
struct RqShared {
    float max[2][RQ_WARPS];
    double sum[5][RQ_WARPS];
};

/*
 * One element of fp8_requant_block and fp8_requant_groups: x's code (returned) and w's with the
 * scales s and inverses inv, and the survival terms D = deq(QX) - deq(QW), dW = (w + p) - w in fp64
 * added to changed, dd, ddw and dwdw.
 */
template <int FMT>
__device__ __forceinline__ uint32_t rq_fp8_element(float xv, float wv, double pv, float sx, float sw, float invX, float invW,
                                                   int &changed, double &dd, double &ddw, double &dwdw) {
    uint32_t qx = e4m3_code(e4m3_clamp(__fmul_rn(xv, sx)));
    uint32_t qw = e4m3_code(e4m3_clamp(__fmul_rn(wv, sw)));
    double d = __dsub_rn(e4m3_dequant<FMT>(qx, invX), e4m3_dequant<FMT>(qw, invW));
    double wd = (double)wv;
    double dw = __dsub_rn(__dadd_rn(wd, pv), wd);
    changed += qx != qw ? 1 : 0;
    dd = __fma_rn(d, d, dd);
    ddw = __fma_rn(d, dw, ddw);
    dwdw = __fma_rn(dw, dw, dwdw);
    return qx;
}

/*
 * One FP8 quantization block, rows [0, h) x columns [0, width) from element base of the row
 * block (rows cols apart), by a group of LANES threads (lane: this thread's index in it), in runs
 * of VEC elements of a row (VEC divides width); its scale to *scaleInv, its sums to sums[0..4].
 */
template <int FMT, typename T, int LANES, int VEC>
__device__ __forceinline__ void fp8_requant_block(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                                  long long cols, long long base, long long h, long long width, int lane,
                                                  unsigned char *__restrict__ codes, float *scaleInv, double *sums, RqShared &sh) {
    const long long runsPerRow = width / VEC;
    const long long runs = h * runsPerRow;
    float ax = 0.0f, aw = 0.0f;
    int bad = 0;
    for (long long k = lane; k < runs; k += LANES) {
        long long r = div_nonneg(k, runsPerRow);
        long long i = base + r * cols + (k - r * runsPerRow) * VEC;
        float xv[VEC], wv[VEC];
        rq_load<FMT, VEC>(x + i, xv);
        rq_load<FMT, VEC>(w + i, wv);
#pragma unroll
        for (int j = 0; j < VEC; j++) {
            bad += isfinite(xv[j]) ? 0 : 1;
            ax = fmaxf(ax, fabsf(xv[j]));
            aw = fmaxf(aw, fabsf(wv[j]));
        }
    }
    rq_max2<LANES>(&ax, &aw, sh.max);
    float sx = ax > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, ax), E4M3_MAX) : 1.0f; /* torch's 448 / t: t.reciprocal() * 448 */
    float sw = aw > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, aw), E4M3_MAX) : 1.0f;
    float invX = __fdiv_rn(1.0f, sx);
    float invW = __fdiv_rn(1.0f, sw);
    double dd = 0.0, ddw = 0.0, dwdw = 0.0;
    int changed = 0;
    for (long long k = lane; k < runs; k += LANES) {
        long long r = div_nonneg(k, runsPerRow);
        long long i = base + r * cols + (k - r * runsPerRow) * VEC;
        float xv[VEC], wv[VEC];
        double pv[VEC];
        rq_load<FMT, VEC>(x + i, xv);
        rq_load<FMT, VEC>(w + i, wv);
        rq_load_p<VEC>(p + i, pv);
        uint32_t q[VEC];
#pragma unroll
        for (int j = 0; j < VEC; j++) q[j] = rq_fp8_element<FMT>(xv[j], wv[j], pv[j], sx, sw, invX, invW, changed, dd, ddw, dwdw);
        rq_store_codes<VEC>(codes + i, q);
    }
    double v[5] = {(double)changed, dd, ddw, dwdw, (double)bad};
    rq_sums<LANES>(v, sh.sum, sums);
    if (lane == 0) *scaleInv = invX;
}

/*
 * Every quantization block of the row block, each by a warp or by the whole block (see above);
 * element by element (VEC = 1: rows or blocks not a multiple of 8 wide, rare) always by the whole
 * block, which keeps the module smaller.
 */
template <int FMT, typename T, int VEC>
__device__ __forceinline__ void fp8_requant_runs(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                                 long long rowCount, long long cols, long long row0, long long blockRows,
                                                 long long blockCols, long long gridCols, unsigned char *__restrict__ codes,
                                                 float *__restrict__ scaleInv, double *__restrict__ sums, RqShared &sh) {
    long long bands = (rowCount + blockRows - 1) / blockRows;
    long long firstBand = row0 / blockRows;
    long long blocks = bands * gridCols;
    if (VEC == 8 && min(blockRows, rowCount) * blockCols <= RQ_WARP_MAX) {
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        for (long long q = (long long)blockIdx.x * RQ_WARPS + warp; q < blocks; q += (long long)gridDim.x * RQ_WARPS) {
            long long band = div_nonneg(q, gridCols);
            long long col = q - band * gridCols;
            long long r0 = band * blockRows, c0 = col * blockCols;
            long long out = (firstBand + band) * gridCols + col;
            fp8_requant_block<FMT, T, 32, VEC>(x, w, p, cols, r0 * cols + c0, min(blockRows, rowCount - r0), min(blockCols, cols - c0), lane,
                                               codes, scaleInv + out, sums + 5 * out, sh);
        }
    } else {
        for (long long q = blockIdx.x; q < blocks; q += gridDim.x) {
            long long band = div_nonneg(q, gridCols);
            long long col = q - band * gridCols;
            long long r0 = band * blockRows, c0 = col * blockCols;
            long long out = (firstBand + band) * gridCols + col;
            fp8_requant_block<FMT, T, RQ_THREADS, VEC>(x, w, p, cols, r0 * cols + c0, min(blockRows, rowCount - r0), min(blockCols, cols - c0),
                                                       threadIdx.x, codes, scaleInv + out, sums + 5 * out, sh);
        }
    }
}

/* The maximum, sum and integer sum over a group of L (2..32, a power of two) adjacent lanes, every lane of the warp calling. */
template <int L>
__device__ __forceinline__ float rq_group_max(float v) {
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int L>
__device__ __forceinline__ double rq_group_sum(double v) {
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int L>
__device__ __forceinline__ int rq_group_isum(int v) {
#pragma unroll
    for (int o = L / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Element j of a run of 8 held as WORDS 32-bit words (8: F32; 4: two 16-bit values a word, the first low), as fp32. */
template <int FMT, int WORDS>
__device__ __forceinline__ float rq_run_value(const uint32_t *words, int j) {
    return widen_to_float<FMT>(WORDS == 8 ? words[j] : (words[j >> 1] >> (16 * (j & 1))) & 0xffffu);
}

/* Quantization blocks of one row and at most this many columns (groups of columns) go by fp8_requant_groups. */
#define RQ_GROUP_MAX 256
/* Runs of 8 a lane in fp8_requant_groups. */
#define RQ_GROUP_RUNS 2

/*
 * FP8 quantization blocks of one row (1 x blockCols, blockCols <= L * RQ_GROUP_RUNS * 8; cols and
 * blockCols multiples of 8, the arrays aligned) by groups of L adjacent lanes, 32 / L blocks a
 * warp at once. Each lane loads its runs of 8 of X and W once into registers (lane l: runs l and
 * l + L of the block) and keeps them for both passes: the absmax (L-lane shuffles), then the
 * codes, whose P it loads only then. The warp's loop is the same for all its lanes (the shuffles
 * take every lane), a lane without a block idles through it. The same codes, scales and counts
 * as fp8_requant_block; the sums add each lane's elements in order, then the lanes by xor
 * shuffles. (A warp a 128-column block, as fp8_requant_runs takes it, idled half its lanes and
 * read X and W twice: 0.23 of the device-to-device copy's traffic, against 0.6 this way.)
 */
template <int FMT, typename T, int L>
__device__ __forceinline__ void fp8_requant_groups(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                                   long long rowCount, long long cols, long long row0, long long blockCols,
                                                   long long gridCols, unsigned char *__restrict__ codes, float *__restrict__ scaleInv,
                                                   double *__restrict__ sums) {
    const int R = RQ_GROUP_RUNS;
    const int WORDS = 8 * (int)sizeof(T) / 4; /* 32-bit words of a run of 8 */
    const int lane = threadIdx.x & (L - 1);
    const int sub = (threadIdx.x & 31) / L;
    const long long blocks = rowCount * gridCols;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long q0 = warp * (32 / L); q0 < blocks; q0 += warps * (32 / L)) {
        long long q = q0 + sub;
        bool active = q < blocks;
        long long r = active ? div_nonneg(q, gridCols) : 0;
        long long c0 = (q - r * gridCols) * blockCols;
        long long base = r * cols + c0;
        int runs = active ? (int)(min(blockCols, cols - c0) >> 3) : 0;
        uint32_t xr[R][WORDS], wr[R][WORDS];
#pragma unroll
        for (int k = 0; k < R; k++) {
            int run = lane + k * L;
#pragma unroll
            for (int m = 0; m < WORDS / 4; m++) {
                uint4 a = make_uint4(0u, 0u, 0u, 0u), b = a;
                if (run < runs) {
                    a = reinterpret_cast<const uint4 *>(x + base + 8 * run)[m];
                    b = reinterpret_cast<const uint4 *>(w + base + 8 * run)[m];
                }
                xr[k][4 * m] = a.x, xr[k][4 * m + 1] = a.y, xr[k][4 * m + 2] = a.z, xr[k][4 * m + 3] = a.w;
                wr[k][4 * m] = b.x, wr[k][4 * m + 1] = b.y, wr[k][4 * m + 2] = b.z, wr[k][4 * m + 3] = b.w;
            }
        }
        float ax = 0.0f, aw = 0.0f;
        int bad = 0;
#pragma unroll
        for (int k = 0; k < R; k++) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float xv = rq_run_value<FMT, WORDS>(xr[k], j);
                float wv = rq_run_value<FMT, WORDS>(wr[k], j);
                bad += isfinite(xv) ? 0 : 1;
                ax = fmaxf(ax, fabsf(xv));
                aw = fmaxf(aw, fabsf(wv));
            }
        }
        ax = rq_group_max<L>(ax);
        aw = rq_group_max<L>(aw);
        float sx = ax > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, ax), E4M3_MAX) : 1.0f; /* as fp8_requant_block */
        float sw = aw > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, aw), E4M3_MAX) : 1.0f;
        float invX = __fdiv_rn(1.0f, sx);
        float invW = __fdiv_rn(1.0f, sw);
        double dd = 0.0, ddw = 0.0, dwdw = 0.0;
        int changed = 0;
#pragma unroll
        for (int k = 0; k < R; k++) {
            int run = lane + k * L;
            if (run < runs) {
                double pv[8];
                rq_load_p<8>(p + base + 8 * run, pv);
                uint32_t qc[8];
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    qc[j] = rq_fp8_element<FMT>(rq_run_value<FMT, WORDS>(xr[k], j), rq_run_value<FMT, WORDS>(wr[k], j), pv[j], sx, sw, invX,
                                                invW, changed, dd, ddw, dwdw);
                }
                rq_store_codes<8>(codes + base + 8 * run, qc);
            }
        }
        int counts = rq_group_isum<L>(changed | (bad << 16)); /* each at most RQ_GROUP_MAX */
        dd = rq_group_sum<L>(dd);
        ddw = rq_group_sum<L>(ddw);
        dwdw = rq_group_sum<L>(dwdw);
        if (active && lane == 0) {
            long long out = row0 * gridCols + q;
            scaleInv[out] = invX;
            double *s = sums + 5 * out;
            s[0] = (double)(counts & 0xffff);
            s[1] = dd;
            s[2] = ddw;
            s[3] = dwdw;
            s[4] = (double)(counts >> 16);
        }
    }
}

/* Whether x, w and p are 16-byte aligned and codes 8-byte aligned: the runs of 8. */
__device__ __forceinline__ bool rq_aligned(const void *x, const void *w, const void *p, const void *codes) {
    return (((unsigned long long)x | (unsigned long long)w | (unsigned long long)p) & 15) == 0 && ((unsigned long long)codes & 7) == 0;
}

/*
 * fp8_requant_{bf16,f16,f32}(x, w, p, rowCount, cols, row0, blockRows, blockCols, gridCols, codes, scaleInv, sums)
 *   Rows [row0, row0 + rowCount) of an FP8 weight (row0 a multiple of blockRows; rowCount one too,
 *   or up to the last row): x, w and p the row block's X, W and P as above, codes its e4m3 codes
 *   (byte e of the block for element e). The quantization blocks are blockRows x blockCols (128 x
 *   128, 1 x cols per row, 1 x g per group), gridCols = ceil(cols / blockCols) of them a row of
 *   blocks; block q = (row / blockRows) * gridCols + col / blockCols gets scaleInv[q] and
 *   sums[5q..]. Per block, as Fp8Requantizer: amax = max |x|; s = fl32(fl32(1 / amax) * 448)
 *   (torch's 448 / t), 1 when amax is 0; inv = fl32(1 / s); code = e4m3(clamp(fl32(x * s), -448,
 *   448)); the same for W, whose codes only count. Bad: a non-finite X. Runs of 8 when cols and
 *   blockCols are multiples of 8 (and the arrays aligned); then blocks of one row up to
 *   RQ_GROUP_MAX columns go by fp8_requant_groups, 8 lanes a block up to 128 columns, else 16.
 *   Launch: RQ_THREADS threads a block, any grid (a block per quantization block, one per RQ_WARPS
 *   of them when a warp takes one, or per RQ_THREADS / L of them for fp8_requant_groups).
 *   Built for 4 blocks an SM (64 registers; F32 spills about 120 bytes since the groups path, 16-bit
 *   D a few; unbounded it takes 86, and 2 blocks an SM ran slower).
 */
template <int FMT, typename T>
__device__ __forceinline__ void fp8_requant(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                            long long rowCount, long long cols, long long row0, long long blockRows,
                                            long long blockCols, long long gridCols, unsigned char *__restrict__ codes,
                                            float *__restrict__ scaleInv, double *__restrict__ sums) {
    __shared__ RqShared sh;
    if (((cols | blockCols) & 7) == 0 && rq_aligned(x, w, p, codes)) {
        /* L lanes a block of one row: L * RQ_GROUP_RUNS runs of 8 cover it */
        if (blockRows == 1 && blockCols <= 128) {
            fp8_requant_groups<FMT, T, 8>(x, w, p, rowCount, cols, row0, blockCols, gridCols, codes, scaleInv, sums);
        } else if (blockRows == 1 && blockCols <= RQ_GROUP_MAX) {
            fp8_requant_groups<FMT, T, 16>(x, w, p, rowCount, cols, row0, blockCols, gridCols, codes, scaleInv, sums);
        } else {
            fp8_requant_runs<FMT, T, 8>(x, w, p, rowCount, cols, row0, blockRows, blockCols, gridCols, codes, scaleInv, sums, sh);
        }
    } else {
        fp8_requant_runs<FMT, T, 1>(x, w, p, rowCount, cols, row0, blockRows, blockCols, gridCols, codes, scaleInv, sums, sh);
    }
}

#define LM_FP8_REQUANT_KERNEL(NAME, FMT, T)                                                                            \
    extern "C" __global__ void __launch_bounds__(RQ_THREADS, 4)                                                      \
        NAME(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p, long long rowCount,      \
             long long cols, long long row0, long long blockRows, long long blockCols, long long gridCols,             \
             unsigned char *__restrict__ codes, float *__restrict__ scaleInv, double *__restrict__ sums) {              \
        fp8_requant<FMT, T>(x, w, p, rowCount, cols, row0, blockRows, blockCols, gridCols, codes, scaleInv, sums);    \
    }
LM_FP8_REQUANT_KERNEL(fp8_requant_bf16, LM_BF16, unsigned short)
LM_FP8_REQUANT_KERNEL(fp8_requant_f16, LM_F16, unsigned short)
LM_FP8_REQUANT_KERNEL(fp8_requant_f32, LM_F32, unsigned int)

/* One LLM.int8 row (cols elements from element base of the row block) by a group of LANES threads, in runs of VEC. */
template <int LANES, int VEC>
__device__ __forceinline__ void int8_requant_row(const unsigned int *__restrict__ x, const unsigned int *__restrict__ w,
                                                 const double *__restrict__ p, long long cols, long long base, int lane,
                                                 unsigned char *__restrict__ codes, float *scb, double *sums, RqShared &sh) {
    const long long runs = cols / VEC;
    float ax = 0.0f, aw = 0.0f;
    int bad = 0;
    for (long long k = lane; k < runs; k += LANES) {
        long long i = base + k * VEC;
        float xv[VEC], wv[VEC];
        rq_load<LM_F32, VEC>(x + i, xv);
        rq_load<LM_F32, VEC>(w + i, wv);
#pragma unroll
        for (int j = 0; j < VEC; j++) {
            bad += (!isfinite(xv[j]) || fabsf(xv[j]) > F16_MAX) ? 1 : 0;
            ax = fmaxf(ax, fabsf(f16_round(xv[j])));
            aw = fmaxf(aw, fabsf(f16_round(wv[j])));
        }
    }
    rq_max2<LANES>(&ax, &aw, sh.max);
    float sx = bnb_mul(127.0f, bnb_rcp(ax));
    float sw = bnb_mul(127.0f, bnb_rcp(aw));
    double dd = 0.0, ddw = 0.0, dwdw = 0.0;
    int changed = 0;
    for (long long k = lane; k < runs; k += LANES) {
        long long i = base + k * VEC;
        float xv[VEC], wv[VEC];
        double pv[VEC];
        rq_load<LM_F32, VEC>(x + i, xv);
        rq_load<LM_F32, VEC>(w + i, wv);
        rq_load_p<VEC>(p + i, pv);
        uint32_t q[VEC];
#pragma unroll
        for (int j = 0; j < VEC; j++) {
            float yx = bnb_mul(f16_round(xv[j]), sx);
            float yw = bnb_mul(f16_round(wv[j]), sw);
            int qx = (signed char)(isnan(yx) ? 0 : (int)rintf(yx));
            int qw = (signed char)(isnan(yw) ? 0 : (int)rintf(yw));
            q[j] = (uint32_t)(unsigned char)qx;
            float vx = __fmul_rn(__fmul_rn((float)qx, ax), INT8_INV127);
            float vw = __fmul_rn(__fmul_rn((float)qw, aw), INT8_INV127);
            double d = __dsub_rn((double)vx, (double)vw);
            double wd = (double)wv[j];
            double dw = __dsub_rn(__dadd_rn(wd, pv[j]), wd);
            changed += qx != qw ? 1 : 0;
            dd = __fma_rn(d, d, dd);
            ddw = __fma_rn(d, dw, ddw);
            dwdw = __fma_rn(dw, dw, dwdw);
        }
        rq_store_codes<VEC>(codes + i, q);
    }
    double v[5] = {(double)changed, dd, ddw, dwdw, (double)bad};
    rq_sums<LANES>(v, sh.sum, sums);
    if (lane == 0) *scb = ax;
}

/* Every row of the row block, each by a warp (rows of at most RQ_WARP_MAX, in runs of 8) or by the whole block. */
template <int VEC>
__device__ __forceinline__ void int8_requant_runs(const unsigned int *__restrict__ x, const unsigned int *__restrict__ w,
                                                  const double *__restrict__ p, long long rowCount, long long cols, long long row0,
                                                  unsigned char *__restrict__ codes, float *__restrict__ scb, double *__restrict__ sums,
                                                  RqShared &sh) {
    if (VEC == 8 && cols <= RQ_WARP_MAX) {
        int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
        for (long long r = (long long)blockIdx.x * RQ_WARPS + warp; r < rowCount; r += (long long)gridDim.x * RQ_WARPS) {
            int8_requant_row<32, VEC>(x, w, p, cols, r * cols, lane, codes, scb + row0 + r, sums + 5 * (row0 + r), sh);
        }
    } else {
        for (long long r = blockIdx.x; r < rowCount; r += gridDim.x) {
            int8_requant_row<RQ_THREADS, VEC>(x, w, p, cols, r * cols, threadIdx.x, codes, scb + row0 + r, sums + 5 * (row0 + r), sh);
        }
    }
}

/*
 * int8_requant(x, w, p, rowCount, cols, row0, codes, scb, sums)
 *   Rows [row0, row0 + rowCount) of an LLM.int8 weight, X and W in F32, to int8 codes (byte e of
 *   the block for element e), each row r of the weight its SCB scb[r] and sums[5r..]. Per row, as
 *   Int8Requantizer (bitsandbytes' Int8Params: the fp32 weight cast to fp16, then kInt8VectorQuant,
 *   built with fast math): h = fp16(x); SCB = max |h|; scale = mul.ftz(127, rcp.approx.ftz(SCB))
 *   (bnb_rcp: lm_rcp_table uploaded); code = rint(mul.ftz(h, scale)), NaN (a zero row: 0 * inf)
 *   giving 0; the same for W. D = fl32(fl32(q * SCB) * 1/127) of X's code and scale minus W's.
 *   Bad: a non-finite X or |X| > 65504, which fp16 cannot hold. Runs of 8 when cols is a multiple
 *   of 8 (and the arrays aligned). Launch: RQ_THREADS threads a block, any grid (a block per row,
 *   or one per RQ_WARPS rows when a warp takes one).
 */
extern "C" __global__ void __launch_bounds__(RQ_THREADS)
    int8_requant(const unsigned int *__restrict__ x, const unsigned int *__restrict__ w, const double *__restrict__ p, long long rowCount,
                 long long cols, long long row0, unsigned char *__restrict__ codes, float *__restrict__ scb, double *__restrict__ sums) {
    __shared__ RqShared sh;
    if ((cols & 7) == 0 && rq_aligned(x, w, p, codes)) {
        int8_requant_runs<8>(x, w, p, rowCount, cols, row0, codes, scb, sums, sh);
    } else {
        int8_requant_runs<1>(x, w, p, rowCount, cols, row0, codes, scb, sums, sh);
    }
}

/*
 * An FP8 weight with one scale for the whole tensor (Fp8Requantizer with one block the size of the
 * weight): no code is known before the whole merged weight's absmax, so its requantization takes two
 * kernels. fp8_tensor_stage runs per row block as the merge makes it and keeps X, W and ΔW of the
 * whole weight on the device with the two maxima; fp8_tensor_requant runs once after the last block,
 * with the scales the host computed from those maxima as Fp8Requantizer does.
 */

/* The fp8_tensor kernels' reductions over a block of RQ_THREADS threads, a slot a thread: the maxima of the threads' a and of their b; every thread gets both. */
__device__ __forceinline__ void rq_block_max2(float *a, float *b, float (*sh)[RQ_THREADS]) {
    sh[0][threadIdx.x] = *a;
    sh[1][threadIdx.x] = *b;
    __syncthreads();
    if (threadIdx.x < 32) {
        for (unsigned k = threadIdx.x + 32; k < RQ_THREADS; k += 32) {
            sh[0][threadIdx.x] = fmaxf(sh[0][threadIdx.x], sh[0][k]);
            sh[1][threadIdx.x] = fmaxf(sh[1][threadIdx.x], sh[1][k]);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (unsigned k = 1; k < 32; k++) {
            sh[0][0] = fmaxf(sh[0][0], sh[0][k]);
            sh[1][0] = fmaxf(sh[1][0], sh[1][k]);
        }
    }
    __syncthreads();
    *a = sh[0][0];
    *b = sh[1][0];
    __syncthreads();
}

/* Sums of the block's threads' five values, into out[0..4] by thread 0. */
__device__ __forceinline__ void rq_block_sums(const double *v, double (*sh)[RQ_THREADS], double *out) {
    for (int k = 0; k < 5; k++) sh[k][threadIdx.x] = v[k];
    __syncthreads();
    if (threadIdx.x < 32) {
        for (unsigned j = threadIdx.x + 32; j < RQ_THREADS; j += 32) {
            for (int k = 0; k < 5; k++) sh[k][threadIdx.x] = __dadd_rn(sh[k][threadIdx.x], sh[k][j]);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int k = 0; k < 5; k++) {
            double t = sh[k][0];
            for (unsigned j = 1; j < 32; j++) t = __dadd_rn(t, sh[k][j]);
            out[k] = t;
        }
    }
    __syncthreads();
}

/*
 * fp8_tensor_stage_{bf16,f16,f32}(x, w, p, count, first, xAll, wAll, dwAll, amax, bad)
 *   Elements [first, first + count) of the weight (a row block): x, w and p the block's X, W and P as
 *   above. X and W are copied to xAll[first..], wAll[first..], ΔW = (W + P) - W (the engine's ΔW, as
 *   fp8_requant takes it) to dwAll[first..]; the block's max |X| and max |W| are folded into amax[0]
 *   and amax[1] (atomicMax of their bits: non-negative floats order as their bits; fmaxf skips a NaN,
 *   which is counted as bad) and each non-finite X is counted into bad[0]. amax starts at 0 (+0.0f)
 *   for the weight, bad at 0 for the block. Launch: RQ_THREADS threads a block, any grid.
 */
template <int FMT, typename T>
__device__ __forceinline__ void fp8_tensor_stage(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,
                                                 long long count, long long first, T *__restrict__ xAll, T *__restrict__ wAll,
                                                 double *__restrict__ dwAll, unsigned int *__restrict__ amax, unsigned int *__restrict__ bad) {
    __shared__ float shMax[2][RQ_THREADS];
    float ax = 0.0f, aw = 0.0f;
    unsigned int nonFinite = 0;
    for (long long i = (long long)blockIdx.x * RQ_THREADS + threadIdx.x; i < count; i += (long long)gridDim.x * RQ_THREADS) {
        T xb = x[i];
        T wb = w[i];
        float xv = widen_to_float<FMT>(xb);
        float wv = widen_to_float<FMT>(wb);
        if (!isfinite(xv)) nonFinite++;
        ax = fmaxf(ax, fabsf(xv));
        aw = fmaxf(aw, fabsf(wv));
        xAll[first + i] = xb;
        wAll[first + i] = wb;
        dwAll[first + i] = __dsub_rn(__dadd_rn((double)wv, p[i]), (double)wv);
    }
    if (nonFinite > 0) atomicAdd(bad, nonFinite);
    rq_block_max2(&ax, &aw, shMax);
    if (threadIdx.x == 0) {
        atomicMax(amax, __float_as_uint(ax));
        atomicMax(amax + 1, __float_as_uint(aw));
    }
}

#define LM_FP8_TENSOR_STAGE_KERNEL(NAME, FMT, T)                                                                       \
    extern "C" __global__ void NAME(const T *__restrict__ x, const T *__restrict__ w, const double *__restrict__ p,    \
                                    long long count, long long first, T *__restrict__ xAll, T *__restrict__ wAll,     \
                                    double *__restrict__ dwAll, unsigned int *__restrict__ amax,                      \
                                    unsigned int *__restrict__ bad) {                                                   \
        fp8_tensor_stage<FMT, T>(x, w, p, count, first, xAll, wAll, dwAll, amax, bad);                                \
    }
LM_FP8_TENSOR_STAGE_KERNEL(fp8_tensor_stage_bf16, LM_BF16, unsigned short)
LM_FP8_TENSOR_STAGE_KERNEL(fp8_tensor_stage_f16, LM_F16, unsigned short)
LM_FP8_TENSOR_STAGE_KERNEL(fp8_tensor_stage_f32, LM_F32, unsigned int)

/*
 * fp8_tensor_requant_{bf16,f16,f32}(xAll, wAll, dwAll, n, sx, sw, invX, invW, codes, sums)
 *   The whole weight of n elements as fp8_tensor_stage left it, with X's scale sx and inverse scale
 *   invX and W's sw and invW (Fp8Requantizer: s = fl32(fl32(1 / amax) * 448), 1 when amax is 0; inv = fl32(1 / s)):
 *   codes[e] = e4m3(clamp(fl32(x * sx), -448, 448)), W's codes only counted, and D as fp8_requant takes
 *   it. Block b takes the elements [b * per, min(n, (b + 1) * per)), per = ceil(n / gridDim.x), and
 *   writes its sums to sums[5b..5b+4] (codes changed, ΣD², ΣD·ΔW, ΣΔW², 0), which the host adds in
 *   block order. Launch: RQ_THREADS threads a block, any grid.
 */
template <int FMT, typename T>
__device__ __forceinline__ void fp8_tensor_requant(const T *__restrict__ xAll, const T *__restrict__ wAll,
                                                   const double *__restrict__ dwAll, long long n, float sx, float sw, float invX,
                                                   float invW, unsigned char *__restrict__ codes, double *__restrict__ sums) {
    __shared__ double shSum[5][RQ_THREADS];
    long long per = (n + gridDim.x - 1) / gridDim.x;
    long long begin = (long long)blockIdx.x * per;
    long long end = min(n, begin + per);
    double v[5] = {0.0, 0.0, 0.0, 0.0, 0.0};
    for (long long i = begin + threadIdx.x; i < end; i += RQ_THREADS) {
        float xv = widen_to_float<FMT>(xAll[i]);
        float wv = widen_to_float<FMT>(wAll[i]);
        uint32_t qx = e4m3_code(e4m3_clamp(__fmul_rn(xv, sx)));
        uint32_t qw = e4m3_code(e4m3_clamp(__fmul_rn(wv, sw)));
        codes[i] = (unsigned char)qx;
        double d = __dsub_rn(e4m3_dequant<FMT>(qx, invX), e4m3_dequant<FMT>(qw, invW));
        double dw = dwAll[i];
        if (qx != qw) v[0] += 1.0;
        v[1] = __dadd_rn(v[1], __dmul_rn(d, d));
        v[2] = __dadd_rn(v[2], __dmul_rn(d, dw));
        v[3] = __dadd_rn(v[3], __dmul_rn(dw, dw));
    }
    rq_block_sums(v, shSum, sums + 5 * (long long)blockIdx.x);
}

#define LM_FP8_TENSOR_REQUANT_KERNEL(NAME, FMT, T)                                                                     \
    extern "C" __global__ void NAME(const T *__restrict__ xAll, const T *__restrict__ wAll,                            \
                                    const double *__restrict__ dwAll, long long n, float sx, float sw, float invX,    \
                                    float invW, unsigned char *__restrict__ codes, double *__restrict__ sums) {        \
        fp8_tensor_requant<FMT, T>(xAll, wAll, dwAll, n, sx, sw, invX, invW, codes, sums);                            \
    }
LM_FP8_TENSOR_REQUANT_KERNEL(fp8_tensor_requant_bf16, LM_BF16, unsigned short)
LM_FP8_TENSOR_REQUANT_KERNEL(fp8_tensor_requant_f16, LM_F16, unsigned short)
LM_FP8_TENSOR_REQUANT_KERNEL(fp8_tensor_requant_f32, LM_F32, unsigned int)
