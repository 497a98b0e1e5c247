/*
 * kernels/quant.cu compiled for the host (host/cuda_host.h stands in for CUDA) and run on cases
 * the CPU codecs wrote (QuantKernelsOnHostTest): every kernel's index arithmetic, tiling and
 * rounding checked against the codecs' bytes on a machine without a GPU. Each launch runs its
 * blocks one after the other, each block's threads as host threads.
 *
 *   quant_host CASES_DIR COUNT [GRID]
 *
 * Case k is the folder CASES_DIR/k: meta.txt ("kernel rowCount cols row0 rows bits blockRows
 * blockCols scaleCols e5m2 productFmt", kernel one of fp8_{bf16,f16,f32}, int8_f32,
 * gptq_{bf16,f16,f32}, awq_{bf16,f16,f32}), staged.bin (the block's staged codes), scales.bin,
 * zeros.bin, gidx.bin (little-endian fp32/int32 of the whole weight, those the kernel reads) and
 * expected.bin (the CPU codec's W of the block).
 *
 * Requantization cases (kernel fp8rq_{bf16,f16,f32} or int8rq; bits 0, blockRows blockCols
 * scaleCols the quantization blocks and their number a row of blocks): staged.bin the block's
 * merged X, w.bin its base W (D bits), p.bin P (fp64), expected.bin the CPU requantizer's codes,
 * expected_scales.bin its scales of the block's quantization blocks, expected_sums.bin its
 * survival sums of the block (codes changed, sum D^2, sum D*dW, sum dW^2) and whether it refused a
 * merged value (1.0) or not (0.0); CASES_DIR/rcp_table.bin is CudaFastMath's reciprocal table.
 * A refused block must count a bad value; any other must give the codes and scales exactly, the
 * count of changed codes exactly and the sums to 1e-12 relative (another order of addition).
 * Kernel fp8trq_{bf16,f16,f32}: the files of an fp8rq case of a whole weight with one scale, run
 * through fp8_tensor_stage and fp8_tensor_requant (tensor_requant_case).
 *
 * GRID 1 launches one block, so that every grid-stride loop takes several turns. Prints one line
 * per failing case and a summary; exit 1 when any failed.
 */
#include "host/cuda_host.h"

thread_local lm_dim3 threadIdx;
thread_local lm_dim3 blockIdx;
lm_dim3 blockDim;
lm_dim3 gridDim;
thread_local std::barrier<> *lm_block_barrier;
thread_local lm_warp lm_this_warp;

#include "../quant.cu"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

static std::vector<char> read_all(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

/* 16-byte aligned copy, as device memory is. */
static std::vector<uint4> aligned(const std::vector<char> &bytes) {
    std::vector<uint4> out(bytes.size() / 16 + 2);
    std::memcpy(out.data(), bytes.data(), bytes.size());
    return out;
}

/* One launch: bx x by host threads (whole warps) run every block in turn, a barrier between blocks. */
static void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, const std::function<void()> &kernel) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    std::barrier<> bar(bx * by);
    unsigned warps = (bx * by + 31) / 32;
    std::vector<std::unique_ptr<std::barrier<>>> warpBarriers;
    for (unsigned k = 0; k < warps; k++) warpBarriers.push_back(std::make_unique<std::barrier<>>(32));
    std::vector<uint64_t> slots(64 * warps);
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < by; ty++) {
        for (unsigned tx = 0; tx < bx; tx++) {
            threads.emplace_back([&, tx, ty] {
                threadIdx = {tx, ty, 0};
                lm_block_barrier = &bar;
                unsigned warp = (tx + bx * ty) / 32;
                lm_this_warp = {warpBarriers[warp].get(), slots.data() + 64 * warp, 0u};
                for (unsigned y = 0; y < gy; y++) {
                    for (unsigned x = 0; x < gx; x++) {
                        blockIdx = {x, y, 0};
                        kernel();
                        bar.arrive_and_wait();
                    }
                }
            });
        }
    }
    for (auto &t : threads) t.join();
}

static unsigned grid_of(long long work, unsigned limit, int oneBlock) {
    return oneBlock ? 1u : (unsigned)std::max(1LL, std::min<long long>(limit, work));
}

/* One requantization case (see the file's comment); prints what failed and returns false. */
static bool requant_case(int id, const std::string &d, const std::string &kernel, long long rowCount, long long cols, long long row0,
                         long long blockRows, long long blockCols, long long gridCols, int oneBlock) {
    std::vector<uint4> x = aligned(read_all(d + "staged.bin"));
    std::vector<uint4> w = aligned(read_all(d + "w.bin"));
    std::vector<uint4> p = aligned(read_all(d + "p.bin"));
    std::vector<char> expected = read_all(d + "expected.bin");
    std::vector<char> expectedScales = read_all(d + "expected_scales.bin");
    std::vector<char> sumsBytes = read_all(d + "expected_sums.bin");
    double want[5];
    std::memcpy(want, sumsBytes.data(), sizeof want);
    bool int8 = kernel == "int8rq";
    long long n = rowCount * cols;
    long long firstBlock = int8 ? row0 : row0 / blockRows * gridCols;
    long long blocks = int8 ? rowCount : (rowCount + blockRows - 1) / blockRows * gridCols;
    long long allBlocks = firstBlock + blocks;
    std::vector<unsigned char> codes(n + 64, 0xab);
    std::vector<float> scales(allBlocks + 16, -1.0f);
    std::vector<double> sums(5 * allBlocks + 16, -1.0);
    unsigned grid = grid_of(blocks, 1u << 16, oneBlock);
    const double *pd = (const double *)p.data();
    const unsigned short *x16 = (const unsigned short *)x.data(), *w16 = (const unsigned short *)w.data();
    const unsigned int *x32 = (const unsigned int *)x.data(), *w32 = (const unsigned int *)w.data();
    unsigned char *c = codes.data();
    float *s = scales.data();
    double *u = sums.data();
    if (int8) launch(grid, 1, RQ_THREADS, 1, [&] { int8_requant(x32, w32, pd, rowCount, cols, row0, c, s, u); });
    else if (kernel == "fp8rq_bf16") launch(grid, 1, RQ_THREADS, 1, [&] { fp8_requant_bf16(x16, w16, pd, rowCount, cols, row0, blockRows, blockCols, gridCols, c, s, u); });
    else if (kernel == "fp8rq_f16") launch(grid, 1, RQ_THREADS, 1, [&] { fp8_requant_f16(x16, w16, pd, rowCount, cols, row0, blockRows, blockCols, gridCols, c, s, u); });
    else launch(grid, 1, RQ_THREADS, 1, [&] { fp8_requant_f32(x32, w32, pd, rowCount, cols, row0, blockRows, blockCols, gridCols, c, s, u); });
    double got[5] = {0, 0, 0, 0, 0};
    for (long long b = firstBlock; b < allBlocks; b++) {
        for (int k = 0; k < 5; k++) got[k] += sums[5 * b + k];
    }
    for (long long b = 0; b < firstBlock; b++) {
        if (scales[b] != -1.0f || sums[5 * b] != -1.0) {
            std::printf("case %d (%s, rows %lld + %lld): wrote quantization block %lld, before the block's\n", id, kernel.c_str(), row0, rowCount, b);
            return false;
        }
    }
    if (want[4] != 0.0) {
        if (got[4] > 0.0) return true;
        std::printf("case %d (%s, rows %lld + %lld): the CPU refused a merged value, the kernel counted none bad\n", id, kernel.c_str(), row0, rowCount);
        return false;
    }
    if (got[4] != 0.0) {
        std::printf("case %d (%s, rows %lld + %lld): the kernel counted %g bad values, the CPU none\n", id, kernel.c_str(), row0, rowCount, got[4]);
        return false;
    }
    for (long long i = 0; i < n + 64; i++) {
        unsigned char e = i < n ? (unsigned char)expected[i] : 0xab;
        if (codes[i] != e) {
            std::printf("case %d (%s, rows %lld + %lld): code %lld is %02x, the CPU requantizer's %02x%s\n", id, kernel.c_str(), row0, rowCount, i,
                        codes[i], e, i < n ? "" : " (past the block)");
            return false;
        }
    }
    for (long long b = 0; b < blocks; b++) {
        float e;
        std::memcpy(&e, expectedScales.data() + 4 * b, 4);
        if (__float_as_uint(scales[firstBlock + b]) != __float_as_uint(e)) {
            std::printf("case %d (%s, rows %lld + %lld): scale %lld is %a, the CPU requantizer's %a\n", id, kernel.c_str(), row0, rowCount,
                        firstBlock + b, scales[firstBlock + b], e);
            return false;
        }
    }
    if (scales[allBlocks] != -1.0f || sums[5 * allBlocks] != -1.0) {
        std::printf("case %d (%s): wrote past the block's quantization blocks\n", id, kernel.c_str());
        return false;
    }
    if (got[0] != want[0]) {
        std::printf("case %d (%s, rows %lld + %lld): %g codes changed, the CPU requantizer's %g\n", id, kernel.c_str(), row0, rowCount, got[0], want[0]);
        return false;
    }
    for (int k = 1; k < 4; k++) {
        if (!(std::fabs(got[k] - want[k]) <= 1e-12 * std::fabs(want[k]) + 1e-300)) {
            std::printf("case %d (%s, rows %lld + %lld): survival sum %d is %.17g, the CPU requantizer's %.17g\n", id, kernel.c_str(), row0,
                        rowCount, k, got[k], want[k]);
            return false;
        }
    }
    return true;
}

/*
 * One case of an FP8 weight with one scale for the whole tensor (kernel fp8trq_{bf16,f16,f32}, the
 * files of an fp8rq case of the whole weight): the weight staged by fp8_tensor_stage in blocks of 7
 * rows, last block first (the engine's blocks finish in any order), the scales computed from the two
 * maxima as the host does (CudaFp8TensorRequantization), then fp8_tensor_requant over the whole weight
 * on 5 blocks (1 with GRID 1). The same checks as requant_case.
 */
static bool tensor_requant_case(int id, const std::string &d, const std::string &kernel, long long rows, long long cols, int oneBlock) {
    std::vector<uint4> x = aligned(read_all(d + "staged.bin"));
    std::vector<uint4> w = aligned(read_all(d + "w.bin"));
    std::vector<uint4> p = aligned(read_all(d + "p.bin"));
    std::vector<char> expected = read_all(d + "expected.bin");
    std::vector<char> expectedScales = read_all(d + "expected_scales.bin");
    std::vector<char> sumsBytes = read_all(d + "expected_sums.bin");
    double want[5];
    std::memcpy(want, sumsBytes.data(), sizeof want);
    bool f32 = kernel == "fp8trq_f32";
    long long n = rows * cols;
    long long size = f32 ? 4 : 2;
    std::vector<uint4> xAll(n * size / 16 + 2), wAll(n * size / 16 + 2), dwAll(n * 8 / 16 + 2);
    unsigned int amax[2] = {0u, 0u};
    unsigned int bad = 0;
    const double *pd = (const double *)p.data();
    double *dw = (double *)dwAll.data();
    for (long long r0 = (rows - 1) / 7 * 7; r0 >= 0; r0 -= 7) {
        long long first = r0 * cols;
        long long count = std::min(7LL, rows - r0) * cols;
        unsigned grid = grid_of((count + RQ_THREADS - 1) / RQ_THREADS, 1u << 16, oneBlock);
        if (f32) {
            const unsigned int *xs = (const unsigned int *)x.data() + first, *ws = (const unsigned int *)w.data() + first;
            launch(grid, 1, RQ_THREADS, 1, [&] { fp8_tensor_stage_f32(xs, ws, pd + first, count, first, (unsigned int *)xAll.data(),
                                                                      (unsigned int *)wAll.data(), dw, amax, &bad); });
        } else {
            const unsigned short *xs = (const unsigned short *)x.data() + first, *ws = (const unsigned short *)w.data() + first;
            unsigned short *xa = (unsigned short *)xAll.data(), *wa = (unsigned short *)wAll.data();
            if (kernel == "fp8trq_bf16") launch(grid, 1, RQ_THREADS, 1, [&] { fp8_tensor_stage_bf16(xs, ws, pd + first, count, first, xa, wa, dw, amax, &bad); });
            else launch(grid, 1, RQ_THREADS, 1, [&] { fp8_tensor_stage_f16(xs, ws, pd + first, count, first, xa, wa, dw, amax, &bad); });
        }
    }
    if (want[4] != 0.0) {
        if (bad > 0) return true;
        std::printf("case %d (%s): the CPU refused a merged value, the kernel counted none bad\n", id, kernel.c_str());
        return false;
    }
    if (bad != 0) {
        std::printf("case %d (%s): the kernel counted %u bad values, the CPU none\n", id, kernel.c_str(), bad);
        return false;
    }
    float ax = __uint_as_float(amax[0]), aw = __uint_as_float(amax[1]);
    float sx = ax > 0.0f ? (1.0f / ax) * 448.0f : 1.0f; /* torch's 448 / amax: reciprocal, then times 448 */
    float sw = aw > 0.0f ? (1.0f / aw) * 448.0f : 1.0f;
    float invX = 1.0f / sx, invW = 1.0f / sw;
    unsigned blocks = oneBlock ? 1u : 5u;
    std::vector<unsigned char> codes(n + 64, 0xab);
    std::vector<double> sums(5 * blocks + 5, -1.0);
    if (f32) launch(blocks, 1, RQ_THREADS, 1, [&] { fp8_tensor_requant_f32((const unsigned int *)xAll.data(), (const unsigned int *)wAll.data(), dw, n,
                                                                           sx, sw, invX, invW, codes.data(), sums.data()); });
    else if (kernel == "fp8trq_bf16") launch(blocks, 1, RQ_THREADS, 1, [&] { fp8_tensor_requant_bf16((const unsigned short *)xAll.data(),
                                                                             (const unsigned short *)wAll.data(), dw, n, sx, sw, invX, invW, codes.data(), sums.data()); });
    else launch(blocks, 1, RQ_THREADS, 1, [&] { fp8_tensor_requant_f16((const unsigned short *)xAll.data(), (const unsigned short *)wAll.data(), dw, n,
                                                                       sx, sw, invX, invW, codes.data(), sums.data()); });
    for (long long i = 0; i < n + 64; i++) {
        unsigned char e = i < n ? (unsigned char)expected[i] : 0xab;
        if (codes[i] != e) {
            std::printf("case %d (%s): code %lld is %02x, the CPU requantizer's %02x%s\n", id, kernel.c_str(), i, codes[i], e, i < n ? "" : " (past the weight)");
            return false;
        }
    }
    float e;
    std::memcpy(&e, expectedScales.data(), 4);
    if (__float_as_uint(invX) != __float_as_uint(e)) {
        std::printf("case %d (%s): scale %a, the CPU requantizer's %a\n", id, kernel.c_str(), invX, e);
        return false;
    }
    if (sums[5 * blocks] != -1.0) {
        std::printf("case %d (%s): wrote sums past its blocks\n", id, kernel.c_str());
        return false;
    }
    double got[4] = {0, 0, 0, 0};
    for (unsigned b = 0; b < blocks; b++) {
        for (int k = 0; k < 4; k++) got[k] += sums[5 * b + k];
    }
    if (got[0] != want[0]) {
        std::printf("case %d (%s): %g codes changed, the CPU requantizer's %g\n", id, kernel.c_str(), got[0], want[0]);
        return false;
    }
    for (int k = 1; k < 4; k++) {
        if (!(std::fabs(got[k] - want[k]) <= 1e-12 * std::fabs(want[k]) + 1e-300)) {
            std::printf("case %d (%s): survival sum %d is %.17g, the CPU requantizer's %.17g\n", id, kernel.c_str(), k, got[k], want[k]);
            return false;
        }
    }
    return true;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: quant_host CASES_DIR COUNT [GRID]\n");
        return 2;
    }
    std::string dir = argv[1];
    int count = std::atoi(argv[2]);
    int oneBlock = argc > 3 && std::atoi(argv[3]) == 1;
    int failures = 0;
    std::vector<char> table = read_all(dir + "/rcp_table.bin");
    if (!table.empty()) std::memcpy(lm_rcp_table, table.data(), std::min(table.size(), sizeof lm_rcp_table));
    for (int id = 0; id < count; id++) {
        std::string d = dir + "/" + std::to_string(id) + "/";
        std::ifstream meta(d + "meta.txt");
        std::string kernel;
        long long rowCount, cols, row0, rows, bits, blockRows, blockCols, scaleCols, e5m2, productFmt;
        if (!(meta >> kernel >> rowCount >> cols >> row0 >> rows >> bits >> blockRows >> blockCols >> scaleCols >> e5m2 >> productFmt)) {
            std::printf("case %d: unreadable %smeta.txt\n", id, d.c_str());
            failures++;
            continue;
        }
        if (kernel.find("trq") != std::string::npos) {
            failures += tensor_requant_case(id, d, kernel, rowCount, cols, oneBlock) ? 0 : 1;
            continue;
        }
        if (kernel.find("rq") != std::string::npos) {
            failures += requant_case(id, d, kernel, rowCount, cols, row0, blockRows, blockCols, scaleCols, oneBlock) ? 0 : 1;
            continue;
        }
        std::vector<uint4> staged = aligned(read_all(d + "staged.bin"));
        std::vector<uint4> scales = aligned(read_all(d + "scales.bin"));
        std::vector<uint4> zeros = aligned(read_all(d + "zeros.bin"));
        std::vector<uint4> gIdx = aligned(read_all(d + "gidx.bin"));
        std::vector<char> expected = read_all(d + "expected.bin");
        std::vector<uint4> out(expected.size() / 16 + 2);
        std::memset(out.data(), 0xab, out.size() * 16);
        const float *s = (const float *)scales.data();
        const int *z = (const int *)zeros.data();
        const int *g = (const int *)gIdx.data();
        unsigned short *o16 = (unsigned short *)out.data();
        unsigned int *o32 = (unsigned int *)out.data();
        if (kernel.rfind("fp8_", 0) == 0 || kernel == "int8_f32") {
            const unsigned char *codes = (const unsigned char *)staged.data();
            long long run = kernel == "int8_f32" || kernel == "fp8_f32" ? 4 : 16; /* quant.cu scaled_run */
            long long work = cols % run == 0 ? rowCount * cols / run : rowCount * cols;
            unsigned grid = grid_of((work + 255) / 256, 1u << 16, oneBlock);
            int e = (int)e5m2, p = (int)productFmt;
            if (kernel == "fp8_bf16") launch(grid, 1, 256, 1, [&] { fp8_dequant_bf16(codes, rowCount, cols, row0, s, blockRows, blockCols, scaleCols, e, p, o16); });
            else if (kernel == "fp8_f16") launch(grid, 1, 256, 1, [&] { fp8_dequant_f16(codes, rowCount, cols, row0, s, blockRows, blockCols, scaleCols, e, p, o16); });
            else if (kernel == "fp8_f32") launch(grid, 1, 256, 1, [&] { fp8_dequant_f32(codes, rowCount, cols, row0, s, blockRows, blockCols, scaleCols, e, p, o32); });
            else launch(grid, 1, 256, 1, [&] { int8_dequant_f32(codes, rowCount, cols, row0, s, o32); });
        } else {
            const uint32_t *words = (const uint32_t *)staged.data();
            bool awq = kernel.rfind("awq_", 0) == 0;
            std::string type = kernel.substr(kernel.find('_') + 1);
            long long tilesX, tilesY;
            if (awq) {
                tilesX = (cols + 255) / 256;
                tilesY = ((row0 + rowCount + 7) / 8 - row0 / 8 + 7) / 8;
            } else {
                tilesX = (rowCount + 31) / 32;
                tilesY = (cols / (32 / bits) + 31) / 32;
            }
            unsigned gx = grid_of(tilesX, 1u << 16, oneBlock), gy = grid_of(tilesY, 65535, oneBlock);
            int b = (int)bits;
            if (awq && type == "bf16") launch(gx, gy, 32, 8, [&] { awq_dequant_bf16(words, rowCount, cols, row0, rows, z, s, g, o16); });
            else if (awq && type == "f16") launch(gx, gy, 32, 8, [&] { awq_dequant_f16(words, rowCount, cols, row0, rows, z, s, g, o16); });
            else if (awq) launch(gx, gy, 32, 8, [&] { awq_dequant_f32(words, rowCount, cols, row0, rows, z, s, g, o32); });
            else if (type == "bf16") launch(gx, gy, 32, 8, [&] { gptq_dequant_bf16(words, rowCount, cols, row0, rows, b, z, s, g, o16); });
            else if (type == "f16") launch(gx, gy, 32, 8, [&] { gptq_dequant_f16(words, rowCount, cols, row0, rows, b, z, s, g, o16); });
            else launch(gx, gy, 32, 8, [&] { gptq_dequant_f32(words, rowCount, cols, row0, rows, b, z, s, g, o32); });
        }
        const unsigned char *got = (const unsigned char *)out.data();
        size_t i = 0;
        while (i < expected.size() && got[i] == (unsigned char)expected[i]) i++;
        if (i < expected.size()) {
            std::printf("case %d (%s, rows %lld + %lld): byte %zu is %02x, the CPU codec's %02x\n", id, kernel.c_str(), row0, rowCount, i, got[i],
                        (unsigned char)expected[i]);
            failures++;
        } else {
            for (i = expected.size(); i < out.size() * 16; i++) {
                if (got[i] != 0xab) {
                    std::printf("case %d (%s): wrote past the block's %zu bytes\n", id, kernel.c_str(), expected.size());
                    failures++;
                    break;
                }
            }
        }
    }
    std::printf("%d cases, %d failures\n", count, failures);
    return failures == 0 ? 0 : 1;
}
