/*
 * bitsandbytes' FP4 comparison tree (csrc/kernels.cu dQuantizeFP4; FourBitCode.encode): the code
 * of a value already scaled by the block's reciprocal absmax. The sign is bit 3 (from x < 0, so
 * -0.0 and NaN take sign 0), the magnitude code 0..7 comes from |x| against the kernel's float
 * literals with strict >, here as the fp32 bits nvcc and the JVM both parse them to (0.29166667f,
 * 0.583333f, 0.8333333f, 0.4166667f, 0.0859375f, 0.20833333f, 0.00260417f); a NaN fails every
 * comparison and takes code 0. Its own header so that the host test (kernels/test/fp4_host.cpp)
 * compiles it with g++ against the CPU codec.
 */
#ifndef LORAMERGE_FOURBIT_CUH
#define LORAMERGE_FOURBIT_CUH

__device__ __forceinline__ int fp4_encode(float x) {
    int sign = x < 0.0f ? 8 : 0;
    float a = fabsf(x);
    int m;
    if (a > 0x1.2aaaaap-2f) {
        m = a > 0x1.2aaaap-1f ? (a > 0x1.aaaaaap-1f ? 3 : 2) : (a > 0x1.aaaaacp-2f ? 5 : 4);
    } else if (a > 0x1.6p-4f) {
        m = a > 0x1.aaaaaap-3f ? 7 : 6;
    } else {
        m = a > 0x1.555572p-9f ? 1 : 0;
    }
    return m + sign;
}

#endif /* LORAMERGE_FOURBIT_CUH */
