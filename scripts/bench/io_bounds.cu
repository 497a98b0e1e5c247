// What bounds a merge's writes and reads on the GPU machine, without Java: the 7B base's 13.5 GB
// written into three files in tmpfs (its shard sizes, 8 MiB blocks taken round-robin over the files
// by 8, 12 or 16 threads) by positional writes, through mappings, mixed (a positional write while the
// file's turn is free, else a mapping of the block: what SafetensorsWriter's WriteMode.MIXED does),
// through pages registered with the CUDA driver; read back into pinned memory and uploaded; and 27 GB
// (what --dtype f32 of that base writes) onto the disk buffered, with sync_file_range, and O_DIRECT,
// beside `cp -r` + sync of 13.5 GB. Prints a markdown table (benchmarks/RESULTS.md, 2026-12-01 (last)).
//
//   nvcc -O2 -o /tmp/io_bounds scripts/bench/io_bounds.cu -lpthread
//   /tmp/io_bounds SHM_DIR DISK_DIR [SETS]    SETS: 1 tmpfs (every method), 2 disk, 4 tmpfs mixed
//                                             against the others at 8/12/16 threads, 8 tmpfs pages
//                                             never touched against pages freed just before and
//                                             freed 10 s before (run it first on a fresh machine);
//                                             a sum (default 3)
//   TW_DIV=N divides the tmpfs sizes by N (to try it out on a small machine; sets 4 and 8 need no GPU).

#include <cuda_runtime.h>
#include <fcntl.h>
#include <pthread.h>
#include <atomic>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define BLK (8L << 20)
static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); exit(1);} } while (0)

enum { PWRITE, MMAPW, MMAPPOP, CUDAREG, CUDAPIN, DIRECT, BUFSYNC, READPREAD, READREG, READMAP, CUDAREGPOP, MMAPBLK, HYBRID, HYBRIDWHOLE };
static const char *names[] = {"pwrite", "mmap+memcpy", "mmap+POPULATE_WRITE+memcpy", "cudaHostRegister+D2H", "D2H pinned+pwrite",
                              "O_DIRECT pwrite", "pwrite+sync_file_range", "pread->pinned+H2D", "cudaHostRegister(ro)+H2D", "mapping memcpy->pinned+H2D",
                              "POPULATE_WRITE+cudaHostRegister+D2H", "mmap per block+memcpy+munmap", "pwrite if free, else mmap per block", "pwrite if free, else whole mapping"};

typedef struct { int fd; char *map; long size; pthread_mutex_t lock; } File;
static std::atomic<long> nmapped;
static File files[64];
static int nfiles;
static long nblocks;
static long *boff; static int *bfile; static long *blen;
static std::atomic<long> next;
static int method;
static std::atomic<int> failed;
static char *dev_src;
static double reg_s[64], copy_s[64];

static void *worker(void *arg) {
    int id = (int)(long)arg;
    char *src;
    cudaStream_t st = 0;
    int cuda = method == CUDAREG || method == CUDAPIN || method == READPREAD || method == READREG || method == READMAP || method == CUDAREGPOP;
    if (cuda) { CK(cudaSetDevice(0)); CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking)); }
    if (cuda && method != CUDAREG && method != READREG && method != CUDAREGPOP) CK(cudaHostAlloc((void **)&src, BLK, 0));
    else if (posix_memalign((void **)&src, 4096, BLK)) exit(1);
    memset(src, id + 1, BLK);
    for (;;) {
        long b = next.fetch_add(1);
        if (b >= nblocks) break;
        File *f = &files[bfile[b]];
        long off = boff[b], len = blen[b];
        switch (method) {
        case PWRITE: case DIRECT: case BUFSYNC:
            for (long d = 0; d < len;) { long w = pwrite(f->fd, src + d, len - d, off + d); if (w <= 0) { perror("pwrite"); exit(1);} d += w; }
            if (method == BUFSYNC) sync_file_range(f->fd, off, len, SYNC_FILE_RANGE_WRITE);
            break;
        case MMAPW: memcpy(f->map + off, src, len); break;
        case HYBRID: case HYBRIDWHOLE: case MMAPBLK:
            if (method != MMAPBLK && pthread_mutex_trylock(&f->lock) == 0) {
                for (long d = 0; d < len;) { long w = pwrite(f->fd, src + d, len - d, off + d); if (w <= 0) { perror("pwrite"); exit(1);} d += w; }
                pthread_mutex_unlock(&f->lock);
            } else if (method == HYBRIDWHOLE) {
                memcpy(f->map + off, src, len); nmapped++;
            } else {
                long a = off & ~4095L; char *m = (char *)mmap(NULL, len + off - a, PROT_READ | PROT_WRITE, MAP_SHARED, f->fd, a);
                if (m == MAP_FAILED) { perror("mmap blk"); exit(1); }
                memcpy(m + (off - a), src, len); munmap(m, len + off - a); nmapped++;
            }
            break;
        case MMAPPOP:
            if (madvise(f->map + off, len, MADV_POPULATE_WRITE)) { perror("madvise"); exit(1); }
            memcpy(f->map + off, src, len); break;
        case CUDAREG: case CUDAREGPOP: {
            double t0 = now();
            if (method == CUDAREGPOP && madvise(f->map + off, len, MADV_POPULATE_WRITE)) { perror("madvise"); exit(1); }
            { cudaError_t e = cudaHostRegister(f->map + off, len, cudaHostRegisterDefault); if (e != cudaSuccess) { if (!failed++) fprintf(stderr, "register: %s\n", cudaGetErrorString(e)); goto out; } }
            double t1 = now();
            CK(cudaMemcpyAsync(f->map + off, dev_src, len, cudaMemcpyDeviceToHost, st)); CK(cudaStreamSynchronize(st));
            double t2 = now();
            CK(cudaHostUnregister(f->map + off));
            reg_s[id] += (t1 - t0) + (now() - t2); copy_s[id] += t2 - t1; break; }
        case CUDAPIN:
            CK(cudaMemcpyAsync(src, dev_src, len, cudaMemcpyDeviceToHost, st)); CK(cudaStreamSynchronize(st));
            for (long d = 0; d < len;) { long w = pwrite(f->fd, src + d, len - d, off + d); if (w <= 0) { perror("pwrite"); exit(1);} d += w; }
            break;
        case READPREAD:
            for (long d = 0; d < len;) { long w = pread(f->fd, src + d, len - d, off + d); if (w <= 0) { perror("pread"); exit(1);} d += w; }
            CK(cudaMemcpyAsync(dev_src + (long)id * BLK, src, len, cudaMemcpyHostToDevice, st)); CK(cudaStreamSynchronize(st));
            break;
        case READMAP:
            memcpy(src, f->map + off, len);
            CK(cudaMemcpyAsync(dev_src + (long)id * BLK, src, len, cudaMemcpyHostToDevice, st)); CK(cudaStreamSynchronize(st));
            break;
        case READREG: {
            double t0 = now();
            { cudaError_t e = cudaHostRegister(f->map + off, len, cudaHostRegisterReadOnly); if (e != cudaSuccess) { if (!failed++) fprintf(stderr, "register ro: %s\n", cudaGetErrorString(e)); goto out; } }
            double t1 = now();
            CK(cudaMemcpyAsync(dev_src + (long)id * BLK, f->map + off, len, cudaMemcpyHostToDevice, st)); CK(cudaStreamSynchronize(st));
            double t2 = now();
            CK(cudaHostUnregister(f->map + off));
            reg_s[id] += (t1 - t0) + (now() - t2); copy_s[id] += t2 - t1; break; }
        }
    }
out:
    if (cuda) CK(cudaStreamDestroy(st));
    return NULL;
}

// files of these sizes (bytes) in dir; blocks interleaved round-robin over the files
static void layout(const char *dir, int n, const long *sizes, int create, int flags) {
    nfiles = n; nblocks = 0;
    long total = 0;
    for (int i = 0; i < n; i++) { total += sizes[i]; }
    free(boff); free(bfile); free(blen);
    boff = (long *)malloc(sizeof(long) * (total / BLK + n + 1)); bfile = (int *)malloc(sizeof(int) * (total / BLK + n + 1)); blen = (long *)malloc(sizeof(long) * (total / BLK + n + 1));
    long pos[64] = {0};
    for (int more = 1; more;) {
        more = 0;
        for (int i = 0; i < n; i++) if (pos[i] < sizes[i]) {
            long l = sizes[i] - pos[i] < BLK ? sizes[i] - pos[i] : BLK;
            boff[nblocks] = pos[i]; bfile[nblocks] = i; blen[nblocks] = l; nblocks++; pos[i] += l; more = 1;
        }
    }
    for (int i = 0; i < n; i++) {
        char p[4096]; snprintf(p, sizeof p, "%s/f%d", dir, i);
        files[i].fd = open(p, (create ? O_CREAT | O_TRUNC | O_RDWR : O_RDWR) | flags, 0644);
        if (files[i].fd < 0) { perror(p); exit(1); }
        files[i].size = sizes[i]; files[i].map = NULL; pthread_mutex_init(&files[i].lock, NULL);
    }
}

static double run(int m, int threads) {
    method = m; next.store(0); nmapped = 0;
    memset(reg_s, 0, sizeof reg_s); memset(copy_s, 0, sizeof copy_s);
    double t0 = now();
    if (m == HYBRID || m == MMAPBLK) for (int i = 0; i < nfiles; i++) if (ftruncate(files[i].fd, files[i].size)) exit(1);
    if (m == MMAPW || m == HYBRIDWHOLE || m == MMAPPOP || m == CUDAREG || m == READREG || m == READMAP || m == CUDAREGPOP) {
        for (int i = 0; i < nfiles; i++) {
            if (m != READREG && m != READMAP && ftruncate(files[i].fd, files[i].size)) { perror("ftruncate"); exit(1); }
            files[i].map = (char *)mmap(NULL, files[i].size, (m == READREG || m == READMAP) ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, files[i].fd, 0);
            if (files[i].map == MAP_FAILED) { perror("mmap"); exit(1); }
        }
    }
    pthread_t th[64];
    for (long i = 0; i < threads; i++) pthread_create(&th[i], NULL, worker, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < nfiles; i++) {
        if (files[i].map) { munmap(files[i].map, files[i].size); files[i].map = NULL; }
    }
    double t1 = now();
    return t1 - t0;
}

static void closeall(const char *dir, int unlinkit) {
    for (int i = 0; i < nfiles; i++) {
        close(files[i].fd);
        if (unlinkit) { char p[4096]; snprintf(p, sizeof p, "%s/f%d", dir, i); unlink(p); }
    }
}

static void report(const char *where, int m, int threads, int n, double t, long total, double extra, const char *note) {
    double r = 0, c = 0; for (int i = 0; i < threads; i++) { r += reg_s[i]; c += copy_s[i]; }
    printf("| %s | %s | %d | %d | %.2f | %.1f |", where, names[m], threads, n, t + extra, total / (t + extra) / 1e9);
    if (nmapped > 0) printf(" %ld of %ld blocks mapped", (long)nmapped, nblocks);
    if (r > 0) printf(" register %.2f thread-s, copy %.2f thread-s", r, c);
    printf(" %s%s |\n", note ? note : "", failed ? " FAILED" : "");
    failed = 0;
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *shm = argc > 1 ? argv[1] : "/dev/shm/io_bounds";
    const char *disk = argc > 2 ? argv[2] : "/tmp/io_bounds";
    int what = argc > 3 ? atoi(argv[3]) : 3;   // a sum of the sets in the header
    mkdir(shm, 0755); mkdir(disk, 0755);
    if (what & 3) { CK(cudaSetDevice(0)); CK(cudaFree(0));
    CK(cudaMalloc((void **)&dev_src, 64 * BLK)); CK(cudaMemset(dev_src, 7, 64 * BLK)); }
    long scale = getenv("TW_DIV") ? atol(getenv("TW_DIV")) : 1;
    long base3[3] = {4938985248L / scale, 4947390768L / scale, 3590488736L / scale};
    long base7[7]; for (int i = 0; i < 7; i++) base7[i] = (13476864752L + 6) / 7;
    long tot3 = base3[0] + base3[1] + base3[2];
    printf("| where | method | threads | files | s | GB/s | notes |\n|---|---|---|---|---|---|---|\n");
    if (what & 1) {
        int ms[] = {PWRITE, CUDAPIN, MMAPW, MMAPPOP, CUDAREG, CUDAREGPOP};
        int ts[] = {8, 16};
        for (int rep = 0; rep < 2; rep++)
        for (int mi = 0; mi < 6; mi++) for (int ti = 0; ti < 2; ti++) {
            if (rep == 1 && ts[ti] == 8) continue;
            layout(shm, 3, base3, 1, 0);
            double t = run(ms[mi], ts[ti]);
            double u0 = now(); closeall(shm, 0); 
            report("tmpfs", ms[mi], ts[ti], 3, t, tot3, 0, NULL);
            // reads of what was written
            if (rep == 0 && mi == 0 && ti == 1) {
                int rs[] = {READPREAD, READMAP, READREG};
                for (int ri = 0; ri < 3; ri++) for (int tj = 0; tj < 2; tj++) {
                    layout(shm, 3, base3, 0, 0);
                    double tr = run(rs[ri], ts[tj]);
                    closeall(shm, 0);
                    report("tmpfs read", rs[ri], ts[tj], 3, tr, tot3, 0, NULL);
                }
            }
            double u1 = now();
            for (int i = 0; i < 3; i++) { char p[4096]; snprintf(p, sizeof p, "%s/f%d", shm, i); unlink(p); }
            if (rep == 0 && mi == 0 && ti == 1) printf("| tmpfs | unlink 13.5 GB | | 3 | %.2f | | |\n", now() - u1);
            (void)u0;
        }
        // 7 files for reference
        layout(shm, 7, base7, 1, 0);
        double t = run(PWRITE, 16); closeall(shm, 1);
        report("tmpfs", PWRITE, 16, 7, t, tot3, 0, NULL);
        layout(shm, 7, base7, 1, 0);
        t = run(MMAPPOP, 16); closeall(shm, 1);
        report("tmpfs", MMAPPOP, 16, 7, t, tot3, 0, NULL);
    }
    if (what & 4) {
        int ms[] = {PWRITE, MMAPW, MMAPBLK, HYBRID, HYBRIDWHOLE};
        int ts[] = {8, 12, 16};
        for (int rep = 0; rep < 2; rep++) for (int mi = 0; mi < 5; mi++) for (int ti = 0; ti < 3; ti++) {
            layout(shm, 3, base3, 1, 0);
            double t = run(ms[mi], ts[ti]);
            closeall(shm, 1);
            report("tmpfs", ms[mi], ts[ti], 3, t, tot3, 0, NULL);
        }
    }
    if (what & 8) {
        // the same mixed writes (16 threads) into pages this machine never touched, into the pages the
        // write before freed (at once, and after 10 s idle); a virtual machine whose host backs guest
        // memory on first touch, or takes freed pages back, shows it here
        const char *what8[] = {"(first write on this machine)", "(rewrite at once after unlink)", "(rewrite after unlink + 10 s idle)",
                               "(rewrite at once after unlink)", "(second set beside the first: fresh pages)", "(rewrite at once after unlink of both)"};
        char shm2[4096]; snprintf(shm2, sizeof shm2, "%s/second", shm); mkdir(shm2, 0755);
        for (int k = 0; k < 6; k++) {
            if (k == 2) sleep(10);
            layout(k == 4 ? shm2 : shm, 3, base3, 1, 0);
            double t = run(HYBRID, 16);
            closeall(k == 4 ? shm2 : shm, 0);
            report("tmpfs", HYBRID, 16, 3, t, tot3, 0, what8[k]);
            if (k == 3) continue;   // the first set stays while the second is written
            double u = now();
            for (int i = 0; i < 3; i++) { char p[4096]; snprintf(p, sizeof p, "%s/f%d", shm, i); unlink(p); }
            if (k == 4) for (int i = 0; i < 3; i++) { char p[4096]; snprintf(p, sizeof p, "%s/f%d", shm2, i); unlink(p); }
            printf("| tmpfs | unlink | | %d | %.2f | | |\n", k == 4 ? 6 : 3, now() - u);
        }
        rmdir(shm2);
    }
    if (what & 2) {
        long f32[6]; for (int i = 0; i < 6; i++) f32[i] = 2 * tot3 / 6 / BLK * BLK;
        long tot = 6 * f32[0];
        for (int rep = 0; rep < 2; rep++) {
            int ms[] = {PWRITE, BUFSYNC, DIRECT};
            int ts[] = {8, 8, 8};
            for (int mi = 0; mi < 3; mi++) {
                layout(disk, 6, f32, 1, ms[mi] == DIRECT ? O_DIRECT : 0);
                double t = run(ms[mi], ts[mi]);
                double s0 = now();
                for (int i = 0; i < 6; i++) fsync(files[i].fd);
                double s = now() - s0;
                closeall(disk, 1);
                char note[64]; snprintf(note, sizeof note, "fsync at the end %.2f s", s);
                report("disk 27 GB", ms[mi], ts[mi], 6, t, tot, s, note);
                sync();
            }
            // the floor: cp -r of a 13.5 GB 3-file folder + sync
            char d1[4096], cmd[9000];
            snprintf(d1, sizeof d1, "%s/b", disk); mkdir(d1, 0755);
            layout(d1, 3, base3, 1, 0); run(PWRITE, 8); closeall(d1, 0); sync();
            snprintf(cmd, sizeof cmd, "rm -rf %s/c; sync", disk); system(cmd);
            double c0 = now();
            snprintf(cmd, sizeof cmd, "cp -r %s %s/c && sync", d1, disk); system(cmd);
            double c = now() - c0;
            printf("| disk 13.5 GB | cp -r + sync | | 3 | %.2f | %.2f | |\n", c, tot3 / c / 1e9);
            snprintf(cmd, sizeof cmd, "rm -rf %s/c %s; sync", disk, d1); system(cmd);
            fflush(stdout);
        }
    }
    return 0;
}
