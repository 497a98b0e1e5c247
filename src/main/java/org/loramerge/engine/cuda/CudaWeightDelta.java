package org.loramerge.engine.cuda;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Optional;
import java.util.function.Supplier;
import jcuda.Pointer;
import jcuda.Sizeof;
import jcuda.jcublas.JCublas2;
import jcuda.jcublas.cublasDiagType;
import jcuda.jcublas.cublasFillMode;
import jcuda.jcublas.cublasOperation;
import jcuda.jcublas.cublasSideMode;
import jcuda.runtime.JCuda;
import jcuda.runtime.cudaMemcpyKind;
import jcuda.runtime.cudaStream_t;
import org.loramerge.engine.DeltaRows;
import org.loramerge.engine.DenseCombination;
import org.loramerge.engine.DeviceOutOfMemoryException;
import org.loramerge.engine.WeightDelta;
import org.loramerge.format.FloatFormat;
import org.loramerge.linalg.CholeskyQr;
import org.loramerge.linalg.Matrix;
import org.loramerge.linalg.RandomizedSvd;
import org.loramerge.linalg.Sketching;
import org.loramerge.linalg.ThinQr;
import org.loramerge.plan.ExtractException;
import org.loramerge.plan.TensorSource;

/**
 * ΔW = tuned − base of one weight, resident on the GPU in fp64 (row-major [rows, cols]) from
 * {@link #open} to {@link #close}. Opening forms ΔW there from both weights' row blocks as stored
 * ({@code extract_delta}, the CPU's subtraction bit for bit) on the backend's forming threads
 * ({@link DeltaFormer}: several blocks read and uploaded at once, double-buffered, no host wait per
 * block), with ‖ΔW‖² from the per-row sums of {@code extract_row_squares} added on the host in row
 * order. ΔW's device memory comes from the backend's {@link DeltaArena}, which bounds all the ΔW
 * open at once, extract's and combine's. The dense combination Δ of PEFT's {@code _svd} methods is formed here from the
 * adapters' factors instead ({@link #ofCombination}: {@code combine_delta}, the CPU engine's Δ bit
 * for bit) and decomposed the same way. The randomized SVD ({@link RandomizedSvd}, the same
 * algorithm, Ω and options as the CPU engine) then makes its passes here, on the calling thread's
 * worker: each product with ΔW is one cuBLAS DGEMM, and its thin QR a shifted CholeskyQR3 ({@link
 * CholeskyQr}: the Gram matrices by DGEMM and the triangular solves by DTRSM here, the l×l Cholesky
 * factors on the host), falling back to Householder's QR of the product on the host where that
 * breaks down (a ΔW of lower rank than the sketch). Each pass's basis stays here for the next
 * ({@link DeviceBasis}), and Ω is the device's one copy per shape and seed ({@link
 * CudaDevice#testMatrix}); what crosses to the host per weight is the l×l Gram matrices and
 * factors (one wait of the stream per Gram matrix, none per triangular solve: {@link DeviceTall}),
 * and the singular vectors at the end (rows·k and k·cols doubles, made here by one DGEMM each from
 * the bases). The small SVD is the host's. The written
 * factors' error is a last DGEMM that subtracts U·Vᵀ from ΔW in place, and its row sums. Several
 * weights may be decomposed at once on different threads, each with its own stream and cuBLAS
 * handle, and each weight's bits are then the same as when it is decomposed alone: cuBLAS keeps its
 * results bitwise reproducible with several streams active when each stream has its own handle (its
 * guide, "Results reproducibility"), and the host's steps are the same code on the same values.
 *
 * <p>The bits differ from the CPU engine's (the DGEMMs sum in another order and the QRs differ by
 * rounding), not the algorithm: the GPU tests hold the singular values to 1e-9 of the CPU's and
 * the error to the same ratio to the optimum, for extract's ΔW and for the combinations' Δ
 * ({@code CudaExtractTest}, {@code CudaCombineSvdTest}). Device memory: ΔW ({@code rows·cols·8}
 * bytes, at most {@link #MAX_DELTA_BYTES}; all open at once at most {@link
 * #DELTA_BUDGET_BYTES}), a few rows×l sketches and the calling threads' worker buffers; for a
 * combination also the adapters' factors while Δ is formed. Where the device has less free memory
 * than that (another process uses it), an allocation may still fail: the SVD then throws a {@link
 * DeviceOutOfMemoryException}, on which {@code combine} decomposes that module on the host.
 */
final class CudaWeightDelta implements WeightDelta, Sketching<CudaWeightDelta.DeviceBasis> {
    /**
     * The largest ΔW kept on the device: half of {@link #DELTA_BUDGET_BYTES}, so that
     * the next weight can be formed while the largest is decomposed. Larger weights (a 128k-token
     * embedding of an 8192-wide model) are decomposed by the CPU engine. {@code combine}'s Δ of
     * the {@code _svd} methods are held to the same size and budget.
     */
    static final long MAX_DELTA_BYTES = 3L << 30;

    /**
     * Device memory for all the ΔW open at once (formed ahead, or being decomposed; for combine, one
     * per module being combined): with the workers' buffers this keeps the engine under 8 GB of
     * device memory however many weights extract keeps in flight or modules combine decomposes at
     * once ({@link DeltaArena} waits for room).
     */
    static final long DELTA_BUDGET_BYTES = 6L << 30;

    private final CudaDevice device;
    private final int rows;
    private final int cols;
    /** Gives ΔW's memory back to the backend's arena. */
    private final Runnable release;
    private final DeviceMemory delta;
    private final double deltaSquared;
    /** Whether {@link #residualSquared} has subtracted the factors from ΔW. */
    private boolean consumed;
    private boolean closed;
    /** {@link #householderFallbacks}; this ΔW is decomposed on one thread. */
    private int householderFallbacks;

    private CudaWeightDelta(CudaDevice device, int rows, int cols, DeviceMemory delta, Runnable release, double deltaSquared) {
        this.device = device;
        this.rows = rows;
        this.cols = cols;
        this.release = release;
        this.delta = delta;
        this.deltaSquared = deltaSquared;
    }

    /**
     * Whether a weight of [rows, cols] in these dtypes fits: not empty, ΔW at most {@link
     * #MAX_DELTA_BYTES}, and one row of either weight at most half a worker's staging buffer.
     */
    static boolean fits(CudaDevice device, TensorSource base, TensorSource tuned, long rows, long cols) {
        long widest = Math.max(base.dtype().sizeInBytes(), tuned.dtype().sizeInBytes());
        return rows > 0 && cols > 0 && rows * cols * Sizeof.DOUBLE <= MAX_DELTA_BYTES && cols * widest <= device.blockBytes() / 2;
    }

    /**
     * Forms ΔW on the device from the two weights, on {@code former}'s threads, into memory of
     * {@code arena} (waiting for room there); NaN or ±Inf in either is an {@link ExtractException}
     * naming the first such element, as the CPU engine's. On any failure ΔW's memory is back in the
     * arena and nothing of it runs on the device.
     */
    static CudaWeightDelta open(CudaDevice device, DeltaFormer former, DeltaArena<DeviceMemory> arena, String name, TensorSource base,
                                TensorSource tuned, int rows, int cols) throws IOException, ExtractException, InterruptedException {
        device.bindContext();
        DeviceWorker w = device.worker();
        FloatFormat bf = FloatFormat.of(base.dtype());
        FloatFormat tf = FloatFormat.of(tuned.dtype());
        long half = device.blockBytes() / 2;
        int blockRows = (int) Math.max(1, Math.min(rows, half / ((long) cols * Math.max(bf.sizeInBytes(), tf.sizeInBytes()))));
        DeltaArena<DeviceMemory>.Lease lease = arena.take((long) rows * cols * Sizeof.DOUBLE);
        long firstBad;
        double sum = 0;
        try {
            try (DeviceMemory bad = device.pool().take(Sizeof.LONG); DeviceMemory rowSquares = device.pool().take((long) rows * Sizeof.DOUBLE)) {
                JCuda.cudaMemsetAsync(bad.pointer(), 0xFF, Sizeof.LONG, w.stream().runtime());
                w.synchronize(); // set before the forming threads' streams compare against it
                // returns (or throws) with every forming stream idle: the sums are complete, and the buffers may go back
                former.form(base, tuned, rows, cols, blockRows, lease.buffer(), rowSquares, bad);
                double[] perRow = new double[rows];
                long[] badHost = new long[1];
                JCuda.cudaMemcpy(Pointer.to(perRow), rowSquares.pointer(), (long) rows * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                JCuda.cudaMemcpy(Pointer.to(badHost), bad.pointer(), Sizeof.LONG, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                firstBad = badHost[0];
                for (double s : perRow) {
                    sum += s;
                }
            }
        } catch (RuntimeException | IOException | Error e) {
            lease.close();
            throw e;
        }
        if (firstBad != -1L) {
            lease.close();
            // the CPU engine's check finds the same first element (row-major order) and names it
            new DeltaRows(name, base, tuned, rows, cols).scan();
            throw new IllegalStateException(name + ": the device found a non-finite value at element " + firstBad + " that the host does not");
        }
        return new CudaWeightDelta(device, rows, cols, lease.buffer(), lease::close, sum);
    }

    /**
     * Whether the dense combination Δ [rows, cols] of {@code dense} is formed and decomposed here:
     * not empty, Δ at most {@link #MAX_DELTA_BYTES}, and at most {@link DeviceCombination#MAX_PARTS}
     * adapters (what kernels/combine.cu holds).
     */
    static boolean fits(DenseCombination dense, long rows, long cols) {
        return rows > 0 && cols > 0 && rows * cols * Sizeof.DOUBLE <= MAX_DELTA_BYTES && dense.terms().size() <= DeviceCombination.MAX_PARTS;
    }

    /**
     * Forms the dense combination Δ of one of PEFT's {@code _svd} methods on the device, on the
     * calling thread's worker: the top-D selection's passes by {@code combine_histogram} (a pass that
     * counts a run of equal magnitudes per row on the host), then every element by {@code
     * combine_delta}, {@link DenseCombination#deltaRow}'s value bit for bit. Where a cut falls inside a
     * run of equal magnitudes (whose ranks the device does not keep) Δ's rows are formed on the host
     * and copied up. ‖Δ‖² is summed as for extract's ΔW. Δ's memory comes from {@code arena},
     * waiting for room there; on any failure it is back in the arena and nothing of it runs on the
     * device.
     */
    static CudaWeightDelta ofCombination(CudaDevice device, DeltaArena<DeviceMemory> arena, DenseCombination dense, int rows, int cols)
            throws InterruptedException {
        device.bindContext();
        DeviceWorker w = device.worker();
        DeltaArena<DeviceMemory>.Lease lease = arena.take((long) rows * cols * Sizeof.DOUBLE);
        DeviceMemory delta = lease.buffer();
        double sum = 0;
        try (DeviceCombination c = new DeviceCombination(device, dense, cols);
             DeviceMemory rowSquares = device.pool().take((long) rows * Sizeof.DOUBLE)) {
            try {
                while (dense.needsSelection()) {
                    c.countSelection(0, rows);
                    c.finishSelectionPass();
                    dense.finishPass();
                }
                if (c.partialTies()) {
                    uploadRows(w, dense, rows, cols, delta);
                } else {
                    c.uploadCuts();
                    c.queueDelta(w, 0, rows, delta);
                }
                device.extract().rowSquares(w.stream(), rows, Pointer.to(delta.pointer()), Pointer.to(new long[] {rows}),
                        Pointer.to(new long[] {cols}), Pointer.to(new long[] {cols}), Pointer.to(rowSquares.pointer()));
                double[] perRow = new double[rows];
                w.synchronize();
                JCuda.cudaMemcpy(Pointer.to(perRow), rowSquares.pointer(), (long) rows * Sizeof.DOUBLE, cudaMemcpyKind.cudaMemcpyDeviceToHost);
                for (double s : perRow) {
                    sum += s;
                }
            } catch (RuntimeException | Error e) {
                // what the stream still has queued reads these buffers: let it finish before they go back
                try {
                    w.synchronize();
                } catch (RuntimeException ignored) {
                    // the failure being thrown says more
                }
                throw e;
            }
        } catch (RuntimeException | Error e) {
            lease.close();
            throw e;
        }
        return new CudaWeightDelta(device, rows, cols, delta, lease::close, sum);
    }

    /** Δ's rows formed on the host ({@link DenseCombination#deltaRow}) and copied into {@code delta}, a block of rows at a time. */
    private static void uploadRows(DeviceWorker w, DenseCombination dense, int rows, int cols, DeviceMemory delta) {
        int blockRows = Math.max(1, Math.min(rows, DeltaRows.BLOCK_ELEMENTS / cols));
        double[] block = new double[blockRows * cols];
        double[] row = new double[cols];
        w.synchronize();
        for (int r0 = 0; r0 < rows; r0 += blockRows) {
            int n = Math.min(blockRows, rows - r0);
            for (int i = 0; i < n; i++) {
                dense.deltaRow(r0 + i, row);
                System.arraycopy(row, 0, block, i * cols, cols);
            }
            JCuda.cudaMemcpy(delta.at((long) r0 * cols * Sizeof.DOUBLE), Pointer.to(block), (long) n * cols * Sizeof.DOUBLE,
                    cudaMemcpyKind.cudaMemcpyHostToDevice);
            // the block array is refilled next: its copy must have landed (see upload)
            JCuda.cudaStreamSynchronize(new cudaStream_t());
        }
    }

    /** ΔW as it is on the device, row-major on the host (for the GPU tests). */
    Matrix values() {
        device.bindContext();
        return fetch(device.worker(), delta, rows, cols);
    }

    @Override
    public double deltaSquared() {
        return deltaSquared;
    }

    @Override
    public RandomizedSvd.Result svd(int rank, RandomizedSvd.Options options) throws IOException {
        if (consumed) {
            throw new IllegalStateException("the SVD of a ΔW whose factors were already subtracted");
        }
        try {
            return RandomizedSvd.truncated(this, deltaSquared, rank, options);
        } catch (RuntimeException e) {
            throw device.outOfMemoryOr(e); // the sketches' buffers: a device shared with other work may have no room left
        }
    }

    @Override
    public String device() {
        return device.label();
    }

    @Override
    public int rows() {
        return rows;
    }

    @Override
    public int cols() {
        return cols;
    }

    /**
     * A basis of the passes, resident here: {@code rows × cols} doubles, row-major, in memory of the
     * device's pool, given back by {@link #release}.
     */
    record DeviceBasis(DeviceMemory memory, int rows, int cols) {
    }

    /**
     * The basis of ΔW·Ω. Ω is the device's copy for this shape and seed ({@link CudaDevice#testMatrix}),
     * taken up by the first weight of that shape only; where the device keeps no more test
     * matrices, one of this call's own.
     */
    @Override
    public DeviceBasis sketchBasis(RandomizedSvd.TestMatrix omega) {
        if (omega.rows() != cols) {
            throw new IllegalArgumentException("Ω " + omega.rows() + "x" + omega.cols() + " does not fit a " + rows + "x" + cols + " ΔW");
        }
        device.bindContext();
        DeviceWorker w = device.worker();
        DeviceMemory kept = device.testMatrix(omega, m -> upload(w, omega.values().data(), m));
        if (kept != null) {
            return product(w, kept, omega.cols(), false, false).q();
        }
        double[] values = omega.values().data();
        try (DeviceMemory dx = device.pool().take(Math.max(1, (long) values.length) * Sizeof.DOUBLE)) {
            return waitingOnFailure(w, () -> {
                upload(w, values, dx);
                return product(w, dx, omega.cols(), false, false).q(); // returns with the stream idle: dx may go back
            });
        }
    }

    @Override
    public DeviceBasis rangeBasis(DeviceBasis z) {
        if (z.rows() != cols) {
            throw new IllegalArgumentException("a basis of " + z.rows() + " rows does not fit a " + rows + "x" + cols + " ΔW");
        }
        device.bindContext();
        return product(device.worker(), z.memory(), z.cols(), false, false).q();
    }

    /** The basis of ΔWᵀ·Q without its R, which only the last pass needs (two l×l products on the host saved). */
    @Override
    public DeviceBasis coRangeBasis(DeviceBasis q) {
        if (q.rows() != rows) {
            throw new IllegalArgumentException("a basis of " + q.rows() + " rows does not fit a transposed " + rows + "x" + cols + " ΔW");
        }
        device.bindContext();
        return product(device.worker(), q.memory(), q.cols(), true, false).q();
    }

    @Override
    public Qr<DeviceBasis> transposeTimesQr(DeviceBasis q) {
        if (q.rows() != rows) {
            throw new IllegalArgumentException("a basis of " + q.rows() + " rows does not fit a transposed " + rows + "x" + cols + " ΔW");
        }
        device.bindContext();
        return product(device.worker(), q.memory(), q.cols(), true, true);
    }

    /**
     * Waits for the worker's stream (nothing queued reads the basis any more) and gives its memory
     * back to the pool, also where that wait fails (a sticky device error fails every later call:
     * the memory is then of no use to anything queued, and the pool must not lose it).
     */
    @Override
    public void release(DeviceBasis basis) {
        try {
            device.bindContext();
            device.worker().synchronize();
        } finally {
            basis.memory().close();
        }
    }

    /** Times the CholeskyQR3 of a pass broke down and Householder's QR on the host made the basis instead (for the tests). */
    int householderFallbacks() {
        return householderFallbacks;
    }

    /**
     * {@code work}, which queues reads of input buffers that the caller gives back to the pool as
     * soon as it returns; where it fails, the worker's stream is waited for first, so that nothing
     * still queued reads a buffer that another user takes next.
     */
    private static <T> T waitingOnFailure(DeviceWorker w, Supplier<T> work) {
        try {
            return work.get();
        } catch (RuntimeException | Error e) {
            synchronizeQuietly(w);
            throw e;
        }
    }

    /**
     * The thin QR of ΔW·X ({@code transpose} false; X cols×l) or ΔWᵀ·X (true; X rows×l), X in
     * device memory: the product formed here and factored in place by CholeskyQR3 into a new basis
     * here, R on the host where {@code wantR} (else null); where that breaks down, Householder's QR
     * of the product on the host, its Q copied up into the basis. Returns with the worker's stream
     * idle.
     */
    private Qr<DeviceBasis> product(DeviceWorker w, DeviceMemory x, int l, boolean transpose, boolean wantR) {
        int inRows = transpose ? rows : cols;
        int outRows = transpose ? cols : rows;
        long outBytes = (long) outRows * l * Sizeof.DOUBLE;
        DeviceMemory y = device.pool().take(outBytes);
        DeviceMemory q = null;
        DeviceMemory g = null;
        DeviceMemory r = null;
        boolean done = false;
        try {
            q = device.pool().take(outBytes);
            g = device.pool().take((long) l * l * Sizeof.DOUBLE);
            r = device.pool().take((long) l * l * Sizeof.DOUBLE);
            // row-major [r, c] is column-major [c, r]: the products are formed as their transposes
            if (transpose) {
                // Zᵀ (l×cols) = Xᵀ (l×rows) · ΔW (ΔW's column-major form is ΔWᵀ, taken transposed)
                JCublas2.cublasDgemm(w.cublas(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_T, l, cols, inRows, one(), x.pointer(), l,
                        delta.pointer(), cols, zero(), y.pointer(), l);
            } else {
                // Yᵀ (l×rows) = Xᵀ (l×cols) · ΔWᵀ (cols×rows)
                JCublas2.cublasDgemm(w.cublas(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N, l, rows, inRows, one(), x.pointer(), l,
                        delta.pointer(), cols, zero(), y.pointer(), l);
            }
            JCuda.cudaMemcpyAsync(q.pointer(), y.pointer(), outBytes, cudaMemcpyKind.cudaMemcpyDeviceToDevice, w.stream().runtime());
            DeviceTall tall = new DeviceTall(w, q, outRows, l, g, r);
            // both return after fetching a Gram matrix (the last thing queued): the stream is idle
            Matrix factorR = null;
            boolean factored;
            if (wantR) {
                Optional<Matrix> f = CholeskyQr.factor(tall);
                factored = f.isPresent();
                factorR = f.orElse(null);
            } else {
                factored = CholeskyQr.orthonormalize(tall);
            }
            if (!factored) {
                householderFallbacks++;
                ThinQr h = ThinQr.householder(fetch(w, y, outRows, l));
                upload(w, h.q().data(), q);
                factorR = wantR ? h.r() : null;
            }
            done = true;
            return new Qr<>(new DeviceBasis(q, outRows, l), factorR);
        } finally {
            if (!done) {
                synchronizeQuietly(w); // what the stream still has queued reads these buffers: let it finish before they go back
            }
            y.close();
            if (g != null) {
                g.close();
            }
            if (r != null) {
                r.close();
            }
            if (!done && q != null) {
                q.close();
            }
        }
    }


    /** After a failure: waits for the worker's stream, the failure being thrown saying more than this one would. */
    private static void synchronizeQuietly(DeviceWorker w) {
        try {
            w.synchronize();
        } catch (RuntimeException ignored) {
            // the failure being thrown says more
        }
    }

    @Override
    public Matrix basisTimes(DeviceBasis q, Matrix c) {
        if (c.rows() != q.cols()) {
            throw new IllegalArgumentException("cannot multiply a basis of " + q.cols() + " columns by " + c.shape());
        }
        device.bindContext();
        DeviceWorker w = device.worker();
        try (DeviceMemory dc = device.pool().take(Math.max(1, (long) c.data().length) * Sizeof.DOUBLE)) {
            return waitingOnFailure(w, () -> {
                upload(w, c.data(), dc);
                return multiply(w, q.memory(), q.rows(), q.cols(), dc, c.cols(), false);
            });
        }
    }

    @Override
    public Matrix timesBasisTransposed(Matrix c, DeviceBasis q) {
        if (c.cols() != q.cols()) {
            throw new IllegalArgumentException("cannot multiply " + c.shape() + " by the transpose of a basis of " + q.cols() + " columns");
        }
        device.bindContext();
        DeviceWorker w = device.worker();
        try (DeviceMemory dc = device.pool().take(Math.max(1, (long) c.data().length) * Sizeof.DOUBLE)) {
            return waitingOnFailure(w, () -> {
                upload(w, c.data(), dc);
                return multiply(w, dc, c.rows(), c.cols(), q.memory(), q.rows(), true);
            });
        }
    }

    /**
     * A·B ({@code transposeB} false; B s×q) or A·Bᵀ (true; B q×s), A p×s, all row-major in device
     * memory, by one DGEMM here, fetched to the host: the products of the SVD's last step, p·s·q
     * multiply-adds each. Returns with the worker's stream idle.
     */
    private Matrix multiply(DeviceWorker w, DeviceMemory a, int p, int s, DeviceMemory b, int q, boolean transposeB) {
        try (DeviceMemory dc = device.pool().take(Math.max(1, (long) p * q) * Sizeof.DOUBLE)) {
            try {
                // row-major C = A·op(B) is column-major Cᵀ (q×p) = op(B)ᵀ·Aᵀ; A's column-major form is Aᵀ (lda = s), B's is Bᵀ
                JCublas2.cublasDgemm(w.cublas(), transposeB ? cublasOperation.CUBLAS_OP_T : cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N,
                        q, p, s, one(), b.pointer(), transposeB ? s : q, a.pointer(), s, zero(), dc.pointer(), q);
                return fetch(w, dc, p, q);
            } catch (RuntimeException | Error e) {
                synchronizeQuietly(w);
                throw e;
            }
        }
    }

    /**
     * A tall row-major matrix on the device, for {@link CholeskyQr}: its Gram matrix by DGEMM, Y·R⁻¹
     * by DTRSM, with one wait of the worker's stream per Gram matrix and none per solve. The Gram
     * matrix comes down through the first l² doubles of the worker's page-locked buffer and R goes
     * up through the next l², each into a device buffer of its own ({@code g}, {@code r}) that the
     * caller gives back once the stream is idle. A solve only queues R's copy and the DTRSM: the
     * copy reads its half of the page-locked buffer before anything queued after it, and the host
     * writes that half again only in the next solve, after a Gram matrix's wait, so nothing reads
     * an R that is being replaced. (Before, each solve waited for the stream three times: twice in
     * the upload of R and once after the DTRSM; CholeskyQR3 with its check made 17 waits a QR, now 4.)
     */
    private final class DeviceTall implements CholeskyQr.Tall {
        private final DeviceWorker w;
        private final DeviceMemory y;
        private final int m;
        private final int l;
        private final DeviceMemory g;
        private final DeviceMemory r;
        /** Whether the page-locked buffer holds both l×l matrices; else R goes up by {@link #upload}, with its waits. */
        private final boolean staged;

        DeviceTall(DeviceWorker w, DeviceMemory y, int m, int l, DeviceMemory g, DeviceMemory r) {
            this.w = w;
            this.y = y;
            this.m = m;
            this.l = l;
            this.g = g;
            this.r = r;
            this.staged = 2L * l * l * Sizeof.DOUBLE <= w.hostIn().sizeInBytes();
        }

        @Override
        public int rows() {
            return m;
        }

        @Override
        public int cols() {
            return l;
        }

        @Override
        public Matrix gram() {
            // Y's column-major form is Yᵀ (l×m): G = Yᵀ·(Yᵀ)ᵀ
            JCublas2.cublasDgemm(w.cublas(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_T, l, l, m, one(), y.pointer(), l,
                    y.pointer(), l, zero(), g.pointer(), l);
            return fetch(w, g, l, l); // symmetric: the column-major G read row-major is Gᵀ, the same
        }

        @Override
        public void solveUpper(Matrix rh) {
            if (staged) {
                long bytes = (long) l * l * Sizeof.DOUBLE;
                PinnedMemory host = w.hostIn();
                host.buffer().position((int) bytes).asDoubleBuffer().put(rh.data(), 0, l * l);
                JCuda.cudaMemcpyAsync(r.pointer(), host.pointer().withByteOffset(bytes), bytes, cudaMemcpyKind.cudaMemcpyHostToDevice,
                        w.stream().runtime());
            } else {
                upload(w, rh.data(), r);
            }
            // (Y·R⁻¹)ᵀ = R⁻ᵀ·Yᵀ: solve Rᵀ·Z = Yᵀ from the left; R row-major read column-major is Rᵀ, lower triangular
            JCublas2.cublasDtrsm(w.cublas(), cublasSideMode.CUBLAS_SIDE_LEFT, cublasFillMode.CUBLAS_FILL_MODE_LOWER,
                    cublasOperation.CUBLAS_OP_N, cublasDiagType.CUBLAS_DIAG_NON_UNIT, l, m, one(), r.pointer(), l, y.pointer(), l);
        }

        @Override
        public Matrix download() {
            return CudaWeightDelta.fetch(w, y, m, l);
        }
    }

    @Override
    public double residualSquared(Matrix u, Matrix vt) {
        if (consumed) {
            throw new IllegalStateException("the factors were already subtracted from this ΔW");
        }
        int r = u.cols();
        if (u.rows() != rows || vt.rows() != r || vt.cols() != cols) {
            throw new IllegalArgumentException("U " + u.shape() + " and Vᵀ " + vt.shape() + " do not fit a " + rows + "x" + cols + " matrix");
        }
        consumed = true;
        device.bindContext();
        DeviceWorker w = device.worker();
        try (DeviceMemory du = device.pool().take(Math.max(1, (long) rows * r) * Sizeof.DOUBLE);
             DeviceMemory dvt = device.pool().take(Math.max(1, (long) r * cols) * Sizeof.DOUBLE);
             DeviceMemory rowSquares = device.pool().take((long) rows * Sizeof.DOUBLE)) {
            if (r > 0) {
                upload(w, u.data(), du);
                upload(w, vt.data(), dvt);
                // ΔWᵀ (cols×rows, column-major) −= (Vᵀ as cols×r) · (U as r×rows)
                JCublas2.cublasDgemm(w.cublas(), cublasOperation.CUBLAS_OP_N, cublasOperation.CUBLAS_OP_N, cols, rows, r,
                        Pointer.to(new double[] {-1.0}), dvt.pointer(), cols, du.pointer(), r, one(), delta.pointer(), cols);
            }
            device.extract().rowSquares(w.stream(), rows, Pointer.to(delta.pointer()), Pointer.to(new long[] {rows}),
                    Pointer.to(new long[] {cols}), Pointer.to(new long[] {cols}), Pointer.to(rowSquares.pointer()));
            double sum = 0;
            for (double s : fetch(w, rowSquares, rows, 1).data()) {
                sum += s;
            }
            return sum;
        }
    }

    private static Pointer one() {
        return Pointer.to(new double[] {1.0});
    }

    private static Pointer zero() {
        return Pointer.to(new double[] {0.0});
    }

    /**
     * Copies {@code values} into {@code m}, after what the worker's stream has queued, and returns
     * once it is there: through the worker's page-locked buffer, a buffer's worth at a time, on the
     * worker's own stream. Not a synchronous copy from the Java array: that goes through the legacy
     * default stream, which every thread shares, so the SVDs of several weights would take turns
     * for their sketches' transfers (about 6.4 KB per row and column of ΔW at rank 64: 16 GB over a
     * 7B model), and a pageable copy is slower than a page-locked one.
     */
    private static void upload(DeviceWorker w, double[] values, DeviceMemory m) {
        PinnedMemory host = w.hostIn();
        int piece = (int) (host.sizeInBytes() / Sizeof.DOUBLE);
        for (int from = 0; from < values.length; from += piece) {
            int n = Math.min(piece, values.length - from);
            w.synchronize(); // nothing queued reads the buffer any more
            host.buffer().asDoubleBuffer().put(values, from, n);
            JCuda.cudaMemcpyAsync(m.at((long) from * Sizeof.DOUBLE), host.pointer(), (long) n * Sizeof.DOUBLE,
                    cudaMemcpyKind.cudaMemcpyHostToDevice, w.stream().runtime());
        }
        w.synchronize(); // the buffer is free again for whatever the thread does next
    }

    /**
     * The first {@code r·c} doubles of {@code m} as a row-major r×c matrix, once the worker's
     * stream is done: copied on that stream into its page-locked buffer, a buffer's worth at a time
     * (see {@link #upload}).
     */
    private static Matrix fetch(DeviceWorker w, DeviceMemory m, int r, int c) {
        double[] d = new double[r * c];
        PinnedMemory host = w.hostIn();
        int piece = (int) (host.sizeInBytes() / Sizeof.DOUBLE);
        for (int from = 0; from < d.length; from += piece) {
            int n = Math.min(piece, d.length - from);
            JCuda.cudaMemcpyAsync(host.pointer(), m.at((long) from * Sizeof.DOUBLE), (long) n * Sizeof.DOUBLE,
                    cudaMemcpyKind.cudaMemcpyDeviceToHost, w.stream().runtime());
            w.synchronize();
            host.buffer().asDoubleBuffer().get(d, from, n);
        }
        if (d.length == 0) {
            w.synchronize(); // still after what the stream has queued (each piece above waited for it)
        }
        return Matrix.wrap(r, c, d);
    }

    @Override
    public void close() {
        if (closed) {
            throw new IllegalStateException("weight delta closed twice");
        }
        closed = true;
        device.bindContext();
        device.worker().synchronize();
        release.run(); // extract's: kept for the next weight of this size (no cudaFree, which would wait for the whole device)
    }
}
