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
 * expected.bin (the CPU codec's W of the block). GRID 1 launches one block, so that every
 * grid-stride loop takes several turns. Prints one line per failing case and a summary; exit 1
 * when any failed.
 */
#include "host/cuda_host.h"

thread_local lm_dim3 threadIdx;
thread_local lm_dim3 blockIdx;
lm_dim3 blockDim;
lm_dim3 gridDim;
thread_local std::barrier<> *lm_block_barrier;

#include "../quant.cu"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
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

/* One launch: bx x by host threads run every block in turn, a barrier between blocks. */
static void launch(unsigned gx, unsigned gy, unsigned bx, unsigned by, const std::function<void()> &kernel) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    std::barrier<> bar(bx * by);
    std::vector<std::thread> threads;
    for (unsigned ty = 0; ty < by; ty++) {
        for (unsigned tx = 0; tx < bx; tx++) {
            threads.emplace_back([&, tx, ty] {
                threadIdx = {tx, ty, 0};
                lm_block_barrier = &bar;
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

int main(int argc, char **argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: quant_host CASES_DIR COUNT [GRID]\n");
        return 2;
    }
    std::string dir = argv[1];
    int count = std::atoi(argv[2]);
    int oneBlock = argc > 3 && std::atoi(argv[3]) == 1;
    int failures = 0;
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
            long long work = cols % 16 == 0 ? rowCount * cols / 16 : cols % 8 == 0 ? rowCount * cols / 8 : rowCount * cols;
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
                tilesX = (cols + 31) / 32;
                tilesY = ((row0 + rowCount + 7) / 8 - row0 / 8 + 31) / 32;
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
