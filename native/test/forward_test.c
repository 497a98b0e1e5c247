/*
 * Calls through the forwarder (linked as libcublas.so.12) into the fake libcublas.so.13.
 *
 * forward_test present N: the fake is on LD_LIBRARY_PATH; N is the number of symbols the
 *                         forwarder exports. Functions the fake defines must forward
 *                         with all arguments and results intact; the others return 15.
 * forward_test absent N:  no libcublas.so.13 anywhere; every call returns 15.
 */
#include <stdio.h>
#include <string.h>

typedef struct { float x, y; } cuComplex;
typedef struct { double x, y; } cuDoubleComplex;

int cublasCreate_v2(void **handle);
int cublasGetVersion_v2(void *handle, int *version);
int cublasSgemm_v2(void *handle, int transa, int transb, int m, int n, int k,
                   const float *alpha, const float *A, int lda, const float *B, int ldb,
                   const float *beta, float *C, int ldc);
int cublasDgemm_v2(void *handle, int transa, int transb, int m, int n, int k,
                   const double *alpha, const double *A, int lda, const double *B, int ldb,
                   const double *beta, double *C, int ldc);
int cublasGemmEx(void *handle, int transa, int transb, int m, int n, int k,
                 const void *alpha, const void *A, int Atype, int lda, const void *B,
                 int Btype, int ldb, const void *beta, void *C, int Ctype, int ldc,
                 int computeType, int algo);
const char *cublasGetStatusName(int status);
const char *cublasGetStatusString(int status);
float cublasSdot(int n, const float *x, int incx, const float *y, int incy);
cuComplex cublasCdotu(int n, const cuComplex *x, int incx, const cuComplex *y, int incy);
cuDoubleComplex cublasZdotu(int n, const cuDoubleComplex *x, int incx,
                            const cuDoubleComplex *y, int incy);
int loramerge_cublas_forward_status(void);
const char *loramerge_cublas_forward_error(void);

static int failures;
static int checks;

#define CHECK(cond)                                                              \
    do {                                                                         \
        checks++;                                                                \
        if (!(cond)) {                                                           \
            failures++;                                                          \
            fprintf(stderr, "forward_test: FAILED %s:%d: %s\n", __FILE__, __LINE__, \
                    #cond);                                                      \
        }                                                                        \
    } while (0)

/* Symbols the fake library defines, all of which JCublas imports. */
#define FAKE_DEFINED 7

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: forward_test present|absent SYMBOL_COUNT\n");
        return 2;
    }
    int present = strcmp(argv[1], "present") == 0;
    int total = 0;
    sscanf(argv[2], "%d", &total);
    const char *err = loramerge_cublas_forward_error();
    int status = loramerge_cublas_forward_status();
    printf("forward_test: status %d, error \"%.160s%s\"\n", status, err,
           strlen(err) > 160 ? "..." : "");

    void *handle = NULL;
    int version = 0;
    float alpha = 2.0f, beta = 3.0f, a = 5.0f, b = 7.0f, c[2] = {11.0f, 0.0f};
    double dalpha = 1.0, dbeta = 0.0, da = 1.0, db = 1.0, dc = 42.0;
    float x[3] = {1, 2, 3}, y[3] = {4, 5, 6};
    cuComplex cx[2] = {{1, 2}, {3, 4}}, cy[2] = {{5, 6}, {7, 8}};
    cuDoubleComplex zx[2] = {{1, 2}, {3, 4}}, zy[2] = {{5, 6}, {7, 8}};

    if (present) {
        CHECK(status == total - FAKE_DEFINED);
        char lacks[64];
        snprintf(lacks, sizeof lacks, "lacks %d of %d functions", total - FAKE_DEFINED, total);
        CHECK(strstr(err, lacks) != NULL);
        CHECK(strstr(err, " cublasAlloc ") != NULL);
        CHECK(strstr(err, " cublasCdotu ") == NULL);
        CHECK(cublasCreate_v2(&handle) == 0 && handle == (void *)0x1234);
        CHECK(cublasGetVersion_v2(handle, &version) == 0 && version == 130000);
        CHECK(cublasSgemm_v2(handle, 1, 2, 3, 4, 5, &alpha, &a, 6, &b, 7, &beta, c, 8) == 0);
        CHECK(c[0] == 2.0f * 5.0f * 7.0f + 3.0f * 11.0f);
        CHECK(c[1] == (float)(1 + 2 * 2 + 3 * 3 + 5 * 4 + 7 * 5 + 11 * 6 + 13 * 7 + 17 * 8));
        CHECK(cublasSdot(3, x, 1, y, 1) == 32.0f);
        cuComplex cr = cublasCdotu(2, cx, 1, cy, 1);
        CHECK(cr.x == 1 * 5 - 2 * 6 + 3 * 7 - 4 * 8 && cr.y == 1 * 6 + 2 * 5 + 3 * 8 + 4 * 7);
        cuDoubleComplex zr = cublasZdotu(2, zx, 1, zy, 1);
        CHECK(zr.x == 1 * 5 - 2 * 6 + 3 * 7 - 4 * 8 && zr.y == 1 * 6 + 2 * 5 + 3 * 8 + 4 * 7);
        CHECK(strcmp(cublasGetStatusName(0), "CUBLAS_STATUS_SUCCESS") == 0);
    } else {
        CHECK(status == total);
        CHECK(strstr(err, "cannot load libcublas.so.13") != NULL);
        CHECK(cublasCreate_v2(&handle) == 15 && handle == NULL);
        CHECK(cublasGetVersion_v2(handle, &version) == 15 && version == 0);
        CHECK(cublasSgemm_v2(handle, 1, 2, 3, 4, 5, &alpha, &a, 6, &b, 7, &beta, c, 8) == 15);
        CHECK(c[0] == 11.0f);
        CHECK(strstr(cublasGetStatusName(0), "not available") != NULL);
    }
    /* Not in the fake: the error stub, whatever the number of arguments; a string for
       the functions that return one (JCublas2 turns it into a Java String). */
    CHECK(strstr(cublasGetStatusString(15), "not available") != NULL);
    CHECK(cublasDgemm_v2(handle, 0, 0, 1, 1, 1, &dalpha, &da, 1, &db, 1, &dbeta, &dc, 1) == 15);
    CHECK(dc == 42.0);
    CHECK(cublasGemmEx(handle, 0, 0, 1, 1, 1, &alpha, &a, 0, 1, &b, 0, 1, &beta, c, 0, 1, 68,
                       -1) == 15);
    printf("forward_test %s: %d passed, %d failed\n", argv[1], checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
