/*
 * fp4_encode (kernels/fourbit.cuh, the code of a scaled value in bitsandbytes' FP4 code book, which
 * fp4_requant and fp4_quantize in nf4.cu call) compiled for the host (host/cuda_host.h stands in
 * for CUDA) and run on values the JVM wrote (Fp4EncodeOnHostTest), which compares the codes with
 * the CPU codec's (FourBitCode.FP4.encode).
 *
 *   fp4_host VALUES CODES
 *
 * VALUES holds little-endian fp32 bit patterns; CODES receives one byte a value, its code 0..15.
 */
#include "host/cuda_host.h"

#include "../fourbit.cuh"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: fp4_host VALUES CODES\n");
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.eof() && in.fail()) {
        std::fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    std::vector<unsigned char> codes(bytes.size() / 4);
    for (size_t i = 0; i < codes.size(); i++) {
        uint32_t bits = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 | (uint32_t)bytes[4 * i + 2] << 16
                        | (uint32_t)bytes[4 * i + 3] << 24;
        float x;
        std::memcpy(&x, &bits, sizeof x);
        codes[i] = (unsigned char)fp4_encode(x);
    }
    std::ofstream out(argv[2], std::ios::binary);
    out.write(reinterpret_cast<const char *>(codes.data()), (std::streamsize)codes.size());
    if (!out) {
        std::fprintf(stderr, "cannot write %s\n", argv[2]);
        return 2;
    }
    std::printf("%zu values\n", codes.size());
    return 0;
}
