/*
 * Probes the GPU's fp32 reciprocal approximation (PTX rcp.approx.ftz.f32, what `1.0f / x` compiles
 * to under nvcc --use_fast_math, as bitsandbytes' kernels are built) against the correctly
 * rounded reciprocal, and writes the table org.loramerge.quant.CudaFastMath reads:
 *
 *   bit m (byte m / 8, bit m % 8) is set when rcp.approx(1.m) != RN(1 / 1.m), for the 2^23
 *   significands m of [1, 2); 1 MiB, little-endian bit order.
 *
 * It checks what the table relies on and exits 1 when the device disagrees: the approximation is
 * faithful (when it is not RN(1/x) it is the other neighbour of 1/x), and the same significands
 * differ in every binade of normal x whose reciprocal is normal (x in [2^-126, 2^126)).
 *
 * Build and run on the GPU machine: scripts/device/make-rcp-table.sh (writes the table under $OUT).
 * One thread per significand; each walks the 252 binades.
 */
#include <cstdio>
#include <cstdlib>
#include <cstring>

__device__ float rcp_approx(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

__global__ void probe(unsigned *bits, unsigned long long *unfaithful, unsigned long long *binadeDependent) {
    unsigned m = blockIdx.x * blockDim.x + threadIdx.x;
    if (m >= (1u << 23)) return;
    bool first = false;
    for (int e = -126; e <= 125; e++) {
        float x = __uint_as_float(((unsigned)(e + 127) << 23) | m);
        float a = rcp_approx(x);
        float rn = __frcp_rn(x);
        bool differs = __float_as_uint(a) != __float_as_uint(rn);
        if (differs) {
            /* the sign of 1 - x*rn says on which side of rn the exact reciprocal lies */
            float residual = __fmaf_rn(-x, rn, 1.0f);
            unsigned other = __float_as_uint(rn) + (residual > 0.0f ? 1u : 0xffffffffu);
            if (residual == 0.0f || __float_as_uint(a) != other) atomicAdd(unfaithful, 1ull);
        }
        if (e == -126) {
            first = differs;
        } else if (differs != first) {
            atomicAdd(binadeDependent, 1ull);
        }
    }
    if (first) atomicOr(&bits[m >> 5], 1u << (m & 31));
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_FILE\n", argv[0]);
        return 2;
    }
    unsigned *bits;
    unsigned long long *counts;
    cudaMallocManaged(&bits, 1 << 20);
    cudaMallocManaged(&counts, 2 * sizeof(unsigned long long));
    memset(bits, 0, 1 << 20);
    counts[0] = counts[1] = 0;
    probe<<<(1 << 23) / 256, 256>>>(bits, counts, counts + 1);
    if (cudaDeviceSynchronize() != cudaSuccess) {
        fprintf(stderr, "kernel failed\n");
        return 1;
    }
    unsigned long long set = 0;
    for (int i = 0; i < (1 << 18); i++) set += __builtin_popcount(bits[i]);
    printf("significands where rcp.approx.ftz.f32 != RN: %llu of 8388608; unfaithful results: %llu; binade-dependent: %llu\n",
           set, counts[0], counts[1]);
    FILE *f = fopen(argv[1], "wb");
    if (f == NULL || fwrite(bits, 1, 1 << 20, f) != (1 << 20) || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", argv[1]);
        return 1;
    }
    return counts[0] == 0 && counts[1] == 0 ? 0 : 1;
}
