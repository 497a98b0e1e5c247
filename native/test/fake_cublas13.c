/*
 * A stand-in for libcublas.so.13 with a handful of functions, for testing the forwarder
 * on a machine without CUDA: built with SONAME libcublas.so.13 and every symbol in the
 * version node libcublas.so.13 (fake_cublas13.map), as the real library has. Each
 * function leaves a trace of every argument it got, so a test can tell that register
 * and stack arguments and float/complex return values pass through the jump stubs.
 */
typedef struct { float x, y; } cuComplex;
typedef struct { double x, y; } cuDoubleComplex;

int cublasCreate_v2(void **handle) {
    *handle = (void *)0x1234;
    return 0;
}

int cublasGetVersion_v2(void *handle, int *version) {
    *version = 130000;
    return handle == (void *)0x1234 ? 0 : 1;
}

/* 14 arguments: the last 8 are passed on the stack. */
int cublasSgemm_v2(void *handle, int transa, int transb, int m, int n, int k,
                   const float *alpha, const float *A, int lda, const float *B, int ldb,
                   const float *beta, float *C, int ldc) {
    C[0] = *alpha * A[0] * B[0] + *beta * C[0];
    C[1] = (float)(transa + 2 * transb + 3 * m + 5 * n + 7 * k + 11 * lda + 13 * ldb + 17 * ldc);
    return handle == (void *)0x1234 ? 0 : 1;
}

/* Legacy API: the result comes back in %xmm0, not %eax. */
float cublasSdot(int n, const float *x, int incx, const float *y, int incy) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) {
        s += x[i * incx] * y[i * incy];
    }
    return s;
}

cuComplex cublasCdotu(int n, const cuComplex *x, int incx, const cuComplex *y, int incy) {
    cuComplex s = {0.0f, 0.0f};
    for (int i = 0; i < n; i++) {
        cuComplex a = x[i * incx], b = y[i * incy];
        s.x += a.x * b.x - a.y * b.y;
        s.y += a.x * b.y + a.y * b.x;
    }
    return s;
}

cuDoubleComplex cublasZdotu(int n, const cuDoubleComplex *x, int incx,
                            const cuDoubleComplex *y, int incy) {
    cuDoubleComplex s = {0.0, 0.0};
    for (int i = 0; i < n; i++) {
        cuDoubleComplex a = x[i * incx], b = y[i * incy];
        s.x += a.x * b.x - a.y * b.y;
        s.y += a.x * b.y + a.y * b.x;
    }
    return s;
}

/* A string result comes back in %rax. */
const char *cublasGetStatusName(int status) {
    return status == 0 ? "CUBLAS_STATUS_SUCCESS" : "FAKE_OTHER";
}
