/*
 * Loads JCublas's natives the way the JVM does after System.load(forwarder):
 *
 *   jcublas_load_test FORWARDER JCUBLAS_LIB...
 *
 * dlopens FORWARDER by its full path (System.load uses RTLD_LAZY), then each JCublas
 * library with RTLD_NOW, so every one of its imports must bind, version included. Then
 * checks that JCublas's view of a few cuBLAS functions is the forwarder's stub.
 * With FORWARDER "-" it skips the first step (the libcublas.so.12 dependency must then
 * come from LD_LIBRARY_PATH).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: jcublas_load_test FORWARDER|- JCUBLAS_LIB...\n");
        return 2;
    }
    int failures = 0, checks = 0;
    void *fwd = NULL;
    if (strcmp(argv[1], "-") != 0) {
        fwd = dlopen(argv[1], RTLD_LAZY);
        checks++;
        if (fwd == NULL) {
            fprintf(stderr, "jcublas_load_test: FAILED to load the forwarder: %s\n", dlerror());
            return 1;
        }
    }
    for (int i = 2; i < argc; i++) {
        void *lib = dlopen(argv[i], RTLD_NOW);
        checks++;
        if (lib == NULL) {
            fprintf(stderr, "jcublas_load_test: FAILED: %s\n", dlerror());
            failures++;
            continue;
        }
        if (fwd == NULL) {
            fwd = dlopen("libcublas.so.12", RTLD_NOLOAD | RTLD_LAZY);
        }
        static const char *const probes[] = {"cublasCreate_v2", "cublasSgemm_v2", "cublasAlloc"};
        for (size_t k = 0; k < sizeof probes / sizeof probes[0]; k++) {
            void *seen = dlsym(lib, probes[k]);
            void *stub = fwd != NULL ? dlsym(fwd, probes[k]) : NULL;
            checks++;
            if (seen == NULL || seen != stub) {
                fprintf(stderr, "jcublas_load_test: FAILED: %s in %s is %p, the forwarder's is %p\n",
                        probes[k], argv[i], seen, stub);
                failures++;
            }
        }
        printf("jcublas_load_test: loaded %s\n", argv[i]);
    }
    if (fwd != NULL) {
        int (*status)(void) = (int (*)(void))dlsym(fwd, "loramerge_cublas_forward_status");
        printf("jcublas_load_test: forwarder status %d\n", status != NULL ? status() : -1);
    }
    printf("jcublas_load_test: %d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
