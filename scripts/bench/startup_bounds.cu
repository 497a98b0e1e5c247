// What the GPU engine's start and a process's exit cost, without Java, on the GPU machine: page-locked
// blocks (the 26 blocks of 8 MiB a merge's 12 workers take) from cudaHostAlloc or registered with
// cudaHostRegister, on 1 to 26 threads; 12 workers' streams, buffers, events and cuBLAS handles made
// one after the other or at once, and the first DGEMM (the driver loads its kernel then); and the
// exit of a process that made no context, a context only, or a merge's context with its memory
// freed or not (or the device reset first), timed from exit() to the parent's wait. Prints one
// line a measurement (benchmarks/RESULTS.md, 2026-12-01, start-up).
//
//   nvcc -O2 -o /tmp/startup_bounds scripts/bench/startup_bounds.cu -lcublas -lpthread
//   /tmp/startup_bounds                 the allocation and worker measurements
//   python3 - <<'EOF'                   the exits: each mode a fresh process, twice
//   import subprocess, time
//   for mode in ["exit-none", "exit-ctx", "exit-full", "exit-freed", "exit-reset"] * 2:
//       t = time.time(); out = subprocess.run(["/tmp/startup_bounds", mode], capture_output=True, text=True).stdout; e = time.time()
//       print(f"{mode}: process {1000 * (e - t):.0f} ms, exit() to gone {1000 * (e - float(out.split()[0])):.0f} ms")
//   EOF

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <vector>

#define BLK (8L << 20)
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double wall() { struct timespec t; clock_gettime(CLOCK_REALTIME, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// page-locked blocks: NB of them, made by `threads` threads, by cudaHostAlloc (registered = 0) or by
// malloc, memset (the pages touched, as Java's direct buffers are) and cudaHostRegister (registered = 1)
static int NB = 26;
static std::vector<void *> blocks;
static int per_thread, registered;

static void *pin(void *arg) {
    long id = (long)arg;
    CK(cudaSetDevice(0));
    for (int i = 0; i < per_thread; i++) {
        int k = id * per_thread + i;
        if (k >= NB) break;
        if (!registered) {
            CK(cudaHostAlloc(&blocks[k], BLK, 0));
        } else {
            void *p;
            if (posix_memalign(&p, 4096, BLK)) exit(1);
            memset(p, 0, BLK);
            CK(cudaHostRegister(p, BLK, 0));
            blocks[k] = p;
        }
    }
    return 0;
}

static double pin_all(int threads, int reg) {
    blocks.assign(NB, nullptr);
    registered = reg;
    per_thread = (NB + threads - 1) / threads;
    double t = now();
    std::vector<pthread_t> th(threads);
    for (long i = 0; i < threads; i++) pthread_create(&th[i], 0, pin, (void *)i);
    for (auto &x : th) pthread_join(x, 0);
    return now() - t;
}

static double free_all(int reg) {
    double t = now();
    for (void *p : blocks) {
        if (!reg) {
            CK(cudaFreeHost(p));
        } else {
            CK(cudaHostUnregister(p));
            free(p);
        }
    }
    return now() - t;
}

// a worker as the engine makes it (DeviceWorker): a stream, seven device buffers, five events, an
// 8 MiB staging block (cudaHostAlloc, as before it was made on first use) and a cuBLAS handle
struct Worker { cudaStream_t s; void *d[7]; cudaEvent_t ev[5]; cublasHandle_t h; void *staging; };
static Worker workers[12];

static void make_worker(int i) {
    Worker &w = workers[i];
    CK(cudaSetDevice(0));
    CK(cudaStreamCreateWithFlags(&w.s, cudaStreamNonBlocking));
    long sizes[] = {BLK, BLK, 4 * BLK, BLK, 32, 8 << 13, 8 << 13};
    for (int k = 0; k < 7; k++) CK(cudaMalloc(&w.d[k], sizes[k]));
    for (int k = 0; k < 5; k++) CK(cudaEventCreate(&w.ev[k]));
    CK(cudaHostAlloc(&w.staging, BLK, 0));
    cublasCreate(&w.h);
    cublasSetStream(w.h, w.s);
}

static void *make_worker_thread(void *arg) { make_worker((int)(long)arg); return 0; }

// the engine's product's shape: rank 16, 4096 columns, a bf16 block's 1024 rows, in fp64
static void product(int i) {
    Worker &w = workers[i];
    double one = 1, zero = 0;
    cublasDgemm(w.h, CUBLAS_OP_N, CUBLAS_OP_N, 4096, 1024, 16, &one, (double *)w.d[2], 4096, (double *)w.d[0], 16, &zero, (double *)w.d[2], 4096);
    CK(cudaStreamSynchronize(w.s));
}

static void destroy_worker(int i) {
    Worker &w = workers[i];
    cublasDestroy(w.h);
    for (int k = 0; k < 7; k++) CK(cudaFree(w.d[k]));
    for (int k = 0; k < 5; k++) CK(cudaEventDestroy(w.ev[k]));
    CK(cudaFreeHost(w.staging));
    CK(cudaStreamDestroy(w.s));
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "all";
    if (!strncmp(what, "exit-", 5)) {
        if (strcmp(what, "exit-none")) {
            CK(cudaSetDevice(0));
            CK(cudaFree(0));
            if (strcmp(what, "exit-ctx")) {
                pin_all(1, 0);
                for (int i = 0; i < 12; i++) { make_worker(i); product(i); }
                if (!strcmp(what, "exit-freed") || !strcmp(what, "exit-reset")) {
                    free_all(0);
                    for (int i = 0; i < 12; i++) destroy_worker(i);
                }
                if (!strcmp(what, "exit-reset")) CK(cudaDeviceReset());
            }
        }
        printf("%.6f\n", wall());
        fflush(stdout);
        return 0;
    }
    double t = now();
    CK(cudaSetDevice(0));
    CK(cudaFree(0));
    printf("driver and primary context: %.1f ms\n", (now() - t) * 1e3);
    for (int rep = 0; rep < 2; rep++) {
        for (int reg = 0; reg < 2; reg++) {
            for (int threads : {1, 4, 13, 26}) {
                double made = pin_all(threads, reg);
                double freed = free_all(reg);
                printf("%d x 8 MiB page-locked by %s, %2d threads: %.1f ms (freed in %.1f ms)\n", NB,
                       reg ? "malloc + memset + cudaHostRegister" : "cudaHostAlloc", threads, made * 1e3, freed * 1e3);
            }
        }
        void *p;
        t = now();
        CK(cudaHostAlloc(&p, NB * BLK, 0));
        double made = now() - t;
        t = now();
        CK(cudaFreeHost(p));
        printf("1 x %ld MiB by cudaHostAlloc: %.1f ms (freed in %.1f ms)\n", NB * BLK >> 20, made * 1e3, (now() - t) * 1e3);
    }
    for (int at_once = 0; at_once < 2; at_once++) {
        t = now();
        if (!at_once) {
            for (int i = 0; i < 12; i++) make_worker(i);
        } else {
            pthread_t th[12];
            for (long i = 0; i < 12; i++) pthread_create(&th[i], 0, make_worker_thread, (void *)i);
            for (auto &x : th) pthread_join(x, 0);
        }
        double made = now() - t;
        t = now();
        product(0);
        double first = now() - t;
        t = now();
        for (int i = 1; i < 12; i++) product(i);
        double others = now() - t;
        t = now();
        for (int i = 0; i < 12; i++) destroy_worker(i);
        printf("12 workers made %s: %.1f ms; first DGEMM %.1f ms, the 11 others %.1f ms; destroyed in %.1f ms\n",
               at_once ? "on 12 threads at once" : "one after the other", made * 1e3, first * 1e3, others * 1e3, (now() - t) * 1e3);
    }
    return 0;
}
