package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Consumer;
import java.util.function.Function;
import jcuda.CudaException;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.JCudaDriver;
import jcuda.jcublas.JCublas2;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaDeviceProp;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.DeviceUnavailableException;
import org.loramerge.engine.Pools;
import org.loramerge.engine.Tuning;
import org.loramerge.linalg.RandomizedSvd;

/**
 * One GPU, opened for the engine: its primary context, the kernel modules of {@code kernels/}, a
 * pool of reusable device buffers, and one {@link DeviceWorker} per thread that uses it. This is
 * the device-block API the engine's tensor handles and the JMH benchmarks share; it knows nothing
 * of plans or tensors.
 */
public final class CudaDevice implements AutoCloseable {
    /** Oldest architecture the kernels target: compute_80, for bf16 and fp64 throughput (kernels/README.md). */
    static final int MIN_MAJOR = 8;
    /** How JCuda names an exhausted device: the runtime's cudaMalloc, the driver API's calls and cuBLAS's (its handle or workspace). */
    private static final Set<String> OUT_OF_MEMORY = Set.of("cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED");

    private final int ordinal;
    private final String name;
    private final String description;
    private final int blockBytes;
    private final CUcontext context = new CUcontext();
    private final List<KernelModule> modules = new ArrayList<>();
    private final List<DeviceWorker> workers = new ArrayList<>();
    private final ThreadLocal<DeviceWorker> worker = new ThreadLocal<>();
    private final DevicePool pool = new DevicePool();
    /** The randomized SVD's test matrices kept here ({@link #testMatrix}), by name; guarded by itself. */
    private final Map<RandomizedSvd.TestMatrix, DeviceMemory> testMatrices = new HashMap<>();
    private long testMatrixBytes;
    /** The merge's kernels, loaded as the device opens: every merge runs them, and a device that cannot load them fails there. */
    private MergeKernels merge;
    // the others load on first use: a merge of 16-bit weights never needs them (nf4 and quant took
    // about 35 ms of the engine's start on the H200 machine; benchmarks/RESULTS.md, 2026-12-01, start-up)
    private final LazyKernels<CombineKernels> combine = new LazyKernels<>("combine.fatbin", CombineKernels::new);
    private final LazyKernels<ExtractKernels> extract = new LazyKernels<>("extract.fatbin", ExtractKernels::new);
    private final LazyKernels<Nf4Kernels> nf4 = new LazyKernels<>("nf4.fatbin", Nf4Kernels::new);
    private final LazyKernels<QuantKernels> quant = new LazyKernels<>("quant.fatbin", QuantKernels::new);
    /** The first product's cuBLAS kernel, loading while the pipeline starts, where the prestart did not load it; null otherwise. */
    private CublasWarmup warmup;
    private boolean closed;

    private CudaDevice(int ordinal, String name, String description, int blockBytes) {
        this.ordinal = ordinal;
        this.name = name;
        this.description = description;
        this.blockBytes = blockBytes;
    }

    /**
     * Opens device {@code ordinal} for workers whose blocks hold up to {@code blockBytes} of output,
     * checking first that {@code workers} of them fit in its free memory. Explains precisely why
     * when it cannot: {@link DeviceUnavailableException#noDevice} when there is no usable device,
     * {@link DeviceUnavailableException#engineFailed} when the device is there but its kernels or
     * cuBLAS do not load.
     */
    public static CudaDevice open(int ordinal, int blockBytes, int workers) throws DeviceUnavailableException {
        if (!onLinuxX86()) {
            throw DeviceUnavailableException.noDevice("the GPU engine runs on Linux x86-64 only", null);
        }
        if (!hasDriver()) {
            throw DeviceUnavailableException.noDevice("no NVIDIA driver: libcuda.so.1 not found", null);
        }
        try {
            JCuda.setExceptionsEnabled(true);
            JCudaDriver.setExceptionsEnabled(true);
        } catch (UnsatisfiedLinkError | NoClassDefFoundError e) {
            Throwable cause = e instanceof NoClassDefFoundError && prestartFailure != null ? prestartFailure : e;
            String first = String.valueOf(cause.getMessage()).split("\n")[0];
            throw DeviceUnavailableException.noDevice("JCuda's native libraries could not be loaded (" + first
                    + "); the GPU engine needs an NVIDIA driver", e);
        }
        int[] count = {0};
        try {
            JCudaDriver.cuInit(0);
            JCuda.cudaGetDeviceCount(count);
        } catch (Throwable e) {
            throw DeviceUnavailableException.noDevice("no usable NVIDIA driver or device (" + String.valueOf(e.getMessage()).split("\n")[0] + ")", e);
        }
        if (ordinal < 0 || ordinal >= count[0]) {
            throw DeviceUnavailableException.noDevice("CUDA device " + ordinal + " does not exist; this machine has " + count[0], null);
        }
        cudaDeviceProp prop = new cudaDeviceProp();
        JCuda.cudaGetDeviceProperties(prop, ordinal);
        String name = prop.getName();
        if (prop.major < MIN_MAJOR) {
            throw DeviceUnavailableException.noDevice(name + " has compute capability " + prop.major + "." + prop.minor
                    + "; loramerge's kernels need 8.0 (Ampere) or newer. Use --device cpu", null);
        }
        JCuda.cudaSetDevice(ordinal);
        long[] free = {0};
        long[] total = {0};
        JCuda.cudaMemGetInfo(free, total);
        long needed = (long) workers * DeviceWorker.deviceBytes(blockBytes) + (256L << 20);
        if (free[0] < needed) {
            throw DeviceUnavailableException.noDevice(name + " has " + (free[0] >> 20) + " MiB free; the GPU engine needs about "
                    + (needed >> 20) + " MiB. Free the device or use --device cpu", null);
        }
        String cublas;
        try {
            // before the first use of JCublas2: its static initializer links libcublas.so.12 once and for all
            cublas = CublasLoader.ensureLoaded();
            JCublas2.setExceptionsEnabled(true);
        } catch (IOException | UnsatisfiedLinkError | NoClassDefFoundError e) {
            throw DeviceUnavailableException.engineFailed("cuBLAS could not be loaded on " + name + ": " + e.getMessage(), e);
        }
        CudaDevice d = new CudaDevice(ordinal, name, "cuda:" + ordinal + " " + name + " (sm_" + prop.major + prop.minor + ", " + cublas + ")",
                blockBytes);
        try {
            CUdevice dev = new CUdevice();
            JCudaDriver.cuDeviceGet(dev, ordinal);
            JCudaDriver.cuDevicePrimaryCtxRetain(d.context, dev);
            JCudaDriver.cuCtxSetCurrent(d.context);
            KernelModule round = new KernelModule("round.fatbin");
            d.modules.add(round);
            d.merge = new MergeKernels(round);
            // the modules loaded on first use are in the jar: one that is not fails the device here,
            // where --device auto falls back to the CPU, not midway through a merge
            for (LazyKernels<?> k : List.of(d.combine, d.extract, d.nf4, d.quant)) {
                KernelModule.requirePresent(k.image);
            }
            d.warmup = CublasWarmup.start(d);
        } catch (Throwable e) {
            d.close();
            throw DeviceUnavailableException.engineFailed("the GPU kernels could not be loaded on " + name + ": " + e.getMessage(), e);
        }
        return d;
    }

    /** Linux on x86-64: where JCuda's native libraries exist. */
    private static boolean onLinuxX86() {
        return System.getProperty("os.name", "").toLowerCase(Locale.ROOT).contains("linux")
                && System.getProperty("os.arch", "").matches("amd64|x86_64");
    }

    /** Whether an NVIDIA driver (libcuda.so.1) is where the loader looks, or where containers put it. */
    private static boolean hasDriver() {
        return CublasLoader.find(CublasLoader.searchDirs(), "libcuda.so.1") != null
                || CublasLoader.find(List.of(Paths.get("/usr/local/nvidia/lib64"), Paths.get("/usr/lib64")), "libcuda.so.1") != null;
    }

    /**
     * Starts, on a background thread, what {@link #open} spends most of its half second on: the
     * driver ({@code cuInit}, by the driver API, whose library loads first), device {@code ordinal}'s
     * primary context and the runtime's start on it, with the runtime's and cuBLAS's libraries
     * loading on another thread meanwhile (one at a time, as JNI loads them: cuBLAS's, loaded first, held the
     * driver's back by 50-100 ms), and then the cuBLAS kernel of a merge's first products
     * ({@link CublasWarmup}). A command calls it first thing, so that the
     * driver starts while the command line is parsed and the plan made; {@link #open} then finds
     * these done (each is done once a process) or waits for them. Never throws: any failure is left
     * for {@link #open} to meet again and explain. Returns the thread (null where there is no GPU
     * engine), which a process that ends early waits for: tearing CUDA down at exit while it
     * initializes is not safe.
     */
    public static Thread prestart(int ordinal) {
        if (!onLinuxX86()) {
            return null;
        }
        Thread driver = new Thread(() -> {
            try {
                if (!hasDriver()) {
                    return;
                }
                // JNI loads one library at a time, and cuBLAS's take long: the driver's library first
                // (cuInit and the context need it alone), then, while the driver starts, the
                // runtime's and cuBLAS's on another thread, in that order
                JCudaDriver.setExceptionsEnabled(true);
                CountDownLatch runtimeLoaded = new CountDownLatch(1);
                AtomicReference<Throwable> runtimeFailure = new AtomicReference<>();
                Thread libraries = new Thread(() -> {
                    try {
                        JCuda.setExceptionsEnabled(true);
                    } catch (RuntimeException | LinkageError e) {
                        runtimeFailure.set(e);
                    } finally {
                        runtimeLoaded.countDown();
                    }
                    try {
                        CublasLoader.ensureLoaded();
                    } catch (IOException | RuntimeException | LinkageError e) {
                        // open() loads it again and says why it failed
                    }
                }, "loramerge-libraries-prestart");
                libraries.setDaemon(true);
                libraries.start();
                boolean present;
                try {
                    JCudaDriver.cuInit(0);
                    int[] count = {0};
                    JCudaDriver.cuDeviceGetCount(count);
                    present = ordinal >= 0 && ordinal < count[0];
                    if (present) {
                        // the device's primary context, held for the process; open() retains the same one
                        CUdevice dev = new CUdevice();
                        JCudaDriver.cuDeviceGet(dev, ordinal);
                        JCudaDriver.cuDevicePrimaryCtxRetain(new CUcontext(), dev);
                    }
                } finally {
                    Pools.awaitUninterruptibly(runtimeLoaded::await); // the runtime's start is this thread's, which Main waits for
                }
                if (runtimeFailure.get() != null) {
                    throw runtimeFailure.get();
                }
                if (present) {
                    // the runtime's own start, on that context
                    JCuda.cudaSetDevice(ordinal);
                    JCuda.cudaFree(new Pointer());
                    try {
                        // and the first product's cuBLAS kernel, while the plan is made
                        CublasLoader.ensureLoaded();
                        JCublas2.setExceptionsEnabled(true);
                        CublasWarmup.runHere(prestartBlockBytes());
                    } catch (IOException | RuntimeException | LinkageError e) {
                        // open() loads cuBLAS again and says why it failed
                    }
                }
            } catch (Throwable e) {
                // no driver, no device, JCuda's libraries missing: open() says which (a class whose
                // initializer failed here is only "not initialized" there, so it keeps this cause)
                prestartFailure = e;
            }
        }, "loramerge-driver-prestart");
        driver.setDaemon(true);
        driver.start();
        return driver;
    }

    /** The block size the merge's workers will take (the knob's, else the default): the warm-up's DGEMM has their shape. */
    private static int prestartBlockBytes() {
        try {
            return Tuning.current().blockBytes();
        } catch (IllegalArgumentException e) {
            return Tuning.DEFAULTS.blockBytes(); // the merge reports the knob
        }
    }

    /** What stopped {@link #prestart}, for {@link #open}'s message; null when nothing did. */
    private static volatile Throwable prestartFailure;

    /**
     * The number of CUDA devices visible to this process (CUDA_VISIBLE_DEVICES applies), or 0 where
     * there is no NVIDIA driver, no device, or not Linux x86-64; never throws. Whether each device
     * is usable is known only when {@link #open} tries it.
     */
    public static int count() {
        if (!onLinuxX86()) {
            return 0;
        }
        if (!hasDriver()) {
            return 0;
        }
        try {
            JCuda.setExceptionsEnabled(true);
            JCudaDriver.setExceptionsEnabled(true);
            int[] n = {0};
            JCudaDriver.cuInit(0);
            JCuda.cudaGetDeviceCount(n);
            return n[0];
        } catch (Throwable e) {
            return 0;
        }
    }

    /** "cuda:0 NVIDIA H200 (sm_90, cuBLAS ...)". */
    public String description() {
        return description;
    }

    /** "cuda:N", as --device names it. */
    public String label() {
        return "cuda:" + ordinal;
    }

    /** The device's name, "NVIDIA H200". */
    public String name() {
        return name;
    }

    /** Output bytes a worker's block buffers hold. */
    public int blockBytes() {
        return blockBytes;
    }

    /** The calling thread's worker: its stream, cuBLAS handle and block buffers, made on first use. */
    public DeviceWorker worker() {
        DeviceWorker w = worker.get();
        if (w == null) {
            bindContext();
            JCuda.cudaSetDevice(ordinal);
            w = new DeviceWorker(this, blockBytes);
            worker.set(w);
            synchronized (workers) {
                workers.add(w);
            }
        }
        return w;
    }

    /** Makes the device's context current on the calling thread (before any CUDA call from a new thread). */
    public void bindContext() {
        JCudaDriver.cuCtxSetCurrent(context);
    }

    /** Device buffers kept for reuse across tensors. */
    public DevicePool pool() {
        return pool;
    }

    /** Most test matrices kept ({@link #testMatrix}): extract's 7B shape has two, combine's modules a few ranks more. */
    static final int MAX_TEST_MATRICES = 16;
    /** Most bytes of test matrices kept: 13 of the largest (Ω of a 16384-wide weight at l = 74 is 9.7 MB). */
    static final long MAX_TEST_MATRIX_BYTES = 128L << 20;

    /**
     * The randomized SVD's test matrix Ω that {@code omega} names, n×l row-major doubles in device
     * memory, filled by {@code fill} on its first use (which must return once the values have
     * landed there, as a copy on the caller's stream followed by a wait for it) and kept until the device
     * closes, so that the many weights of one shape share one copy instead of each taking its
     * own up (2.4 MB to 6.5 MB a weight on the 7B shape, with two waits of the worker's stream).
     * Every stream may read it once this returns; it is never written to, and never given back
     * before the device closes. Null where {@link #MAX_TEST_MATRICES} or {@link
     * #MAX_TEST_MATRIX_BYTES} are already kept: the caller then uploads its own.
     */
    DeviceMemory testMatrix(RandomizedSvd.TestMatrix omega, Consumer<DeviceMemory> fill) {
        long bytes = Math.max(1, (long) omega.rows() * omega.cols()) * Sizeof.DOUBLE;
        synchronized (testMatrices) {
            DeviceMemory m = testMatrices.get(omega);
            if (m != null) {
                return m;
            }
            if (testMatrices.size() >= MAX_TEST_MATRICES || testMatrixBytes + bytes > MAX_TEST_MATRIX_BYTES) {
                return null;
            }
            // under the lock: a second thread that wants the same Ω waits for this upload rather than making its own
            m = new DeviceMemory(bytes);
            try {
                fill.accept(m);
            } catch (RuntimeException | Error e) {
                m.close();
                throw e;
            }
            testMatrices.put(omega, m);
            testMatrixBytes += bytes;
            return m;
        }
    }

    /** The kernel modules loaded so far (tests: round's alone until another's kernels are asked for). */
    int loadedModules() {
        synchronized (modules) {
            return modules.size();
        }
    }

    /** The kernels of kernels/round.cu. */
    MergeKernels merge() {
        return merge;
    }

    /** The kernels of kernels/combine.cu. */
    CombineKernels combine() {
        return combine.get();
    }

    /** The kernels of kernels/extract.cu. */
    ExtractKernels extract() {
        return extract.get();
    }

    /** The kernels of kernels/nf4.cu. */
    public Nf4Kernels nf4() {
        return nf4.get();
    }

    /** The kernels of kernels/quant.cu. */
    public QuantKernels quant() {
        return quant.get();
    }

    /** Whether {@code e}, or an exception it was caused by, is JCuda's report that the device had no memory for a call. */
    static boolean isOutOfMemory(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof DeviceOutOfMemoryException || t instanceof CudaException && OUT_OF_MEMORY.contains(t.getMessage())) {
                return true;
            }
        }
        return false;
    }

    /**
     * {@code e} as a {@link DeviceOutOfMemoryException} naming this device where it reports an
     * exhausted device ({@link #isOutOfMemory}), else {@code e} itself: for the caller to throw.
     * The runtime keeps a failed call's error as the calling thread's last error until it is read;
     * it is read here, so that nothing later on this thread takes it for its own failure.
     */
    RuntimeException outOfMemoryOr(RuntimeException e) {
        if (e instanceof DeviceOutOfMemoryException || !isOutOfMemory(e)) {
            return e;
        }
        try {
            JCuda.cudaGetLastError();
        } catch (CudaException cleared) {
            // the error just reported, now reset
        }
        return new DeviceOutOfMemoryException(label(), e);
    }

    /** Waits for every worker's stream. */
    public void synchronizeAll() {
        bindContext();
        synchronized (workers) {
            for (DeviceWorker w : workers) {
                w.stream().synchronize();
            }
        }
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("device closed twice");
        }
        closed = true;
        bindContext();
        try {
            if (warmup != null) {
                warmup.close();
            }
        } finally {
            closeWorkersModulesAndContext();
        }
    }

    private void closeWorkersModulesAndContext() {
        synchronized (workers) {
            for (DeviceWorker w : workers) {
                w.close();
            }
        }
        pool.close();
        synchronized (testMatrices) {
            for (DeviceMemory m : testMatrices.values()) {
                m.close();
            }
            testMatrices.clear();
        }
        synchronized (modules) {
            for (KernelModule m : modules) {
                m.close();
            }
        }
        CUdevice dev = new CUdevice();
        JCudaDriver.cuDeviceGet(dev, ordinal);
        JCudaDriver.cuDevicePrimaryCtxRelease(dev);
    }

    /** A module's kernels, loaded on the first call for them (with this device's context, from any thread). */
    private final class LazyKernels<K> {
        private final String image;
        private final Function<KernelModule, K> wrap;
        private volatile K kernels;

        LazyKernels(String image, Function<KernelModule, K> wrap) {
            this.image = image;
            this.wrap = wrap;
        }

        K get() {
            K k = kernels;
            if (k != null) {
                return k;
            }
            synchronized (modules) {
                if (kernels == null) {
                    if (closed) {
                        throw new IllegalStateException("kernels of " + image + " asked for after the device was closed");
                    }
                    bindContext();
                    KernelModule m;
                    try {
                        m = new KernelModule(image);
                    } catch (IOException | RuntimeException e) {
                        throw new IllegalStateException("the GPU kernels of " + image + " could not be loaded on " + name + ": " + e.getMessage(), e);
                    }
                    modules.add(m);
                    kernels = wrap.apply(m);
                }
                return kernels;
            }
        }
    }
}
