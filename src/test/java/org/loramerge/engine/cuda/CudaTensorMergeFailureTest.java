package org.loramerge.engine.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicInteger;
import jcuda.CudaException;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.engine.TensorJob;
import org.loramerge.engine.TensorMerge;
import org.loramerge.format.DType;
import org.loramerge.format.SafetensorsFile;
import org.loramerge.plan.DoraSpec;
import org.loramerge.plan.Layout;
import org.loramerge.plan.OutputTensor;
import org.loramerge.plan.TermSpec;
import org.loramerge.testutil.TensorFiles;

/**
 * A GPU merge whose opening fails after it took device memory gives every buffer back to the
 * device's pool and throws the failure itself. Skips itself where there is no usable GPU.
 */
@Tag("gpu")
class CudaTensorMergeFailureTest extends OnTheGpu {
    @TempDir
    Path dir;

    @Test
    void aDoraMergeWhoseUploadsFailToLandGivesBackItsFactorsAndMagnitudesAndThrowsThatFailure() throws Exception {
        int rows = 301;
        int cols = 700;
        int rank = 8;
        SplittableRandom rnd = new SplittableRandom(5);
        TensorFiles files = new TensorFiles()
                .add("w", DType.BF16, new long[] {rows, cols}, CudaBackendTest.gaussian(rnd, rows * cols, 0.02))
                .add("a", DType.F32, new long[] {rank, cols}, CudaBackendTest.gaussian(rnd, rank * cols, 0.05))
                .add("b", DType.F32, new long[] {rows, rank}, CudaBackendTest.gaussian(rnd, rows * rank, 0.02))
                .add("m", DType.F32, new long[] {rows}, CudaBackendTest.gaussian(rnd, rows, 1.0));
        try (SafetensorsFile f = files.write(dir.resolve("d.safetensors"))) {
            TermSpec term = new TermSpec("x", Layout.LINEAR, TensorFiles.source(f, "a"), TensorFiles.source(f, "b"), rank, 2.0);
            DoraSpec dora = new DoraSpec(DoraSpec.Axis.ROW, TensorFiles.source(f, "m"));
            OutputTensor out = OutputTensor.merge("w", DType.BF16, TensorFiles.source(f, "w"), new OutputTensor.Update(List.of(term), dora, null));
            TensorJob job = TensorJob.prepare(out);
            assertTrue(CudaBackend.onGpu(job), "row-norm DoRA goes to the GPU, with its magnitudes on the device");
            DevicePool pool = cuda.device().pool();
            long held = pool.outstanding();

            // the wait for the uploads fails once (as a fault of the device reported there would); the wait on the way out works
            CudaException fault = new CudaException("cudaErrorLaunchFailure");
            AtomicInteger waits = new AtomicInteger();
            Runnable failingOnce = () -> {
                if (waits.getAndIncrement() == 0) {
                    throw fault;
                }
                Taken.settleLegacyStream();
            };
            CudaException thrown = assertThrows(CudaException.class, () -> new CudaTensorMerge(cuda, cuda.device(), job, failingOnce));
            assertSame(fault, thrown, "the failure itself, not one of the clean-up");
            assertEquals(0, thrown.getSuppressed().length, "nothing failed while giving the buffers back");
            assertEquals(2, waits.get(), "the uploads were waited for again before their memory went back to the pool");
            assertEquals(held, pool.outstanding(), "the factors and DoRA's magnitudes went back to the pool");

            try (TensorMerge next = cuda.openMerge(job)) {
                assertTrue(pool.outstanding() > held, "the next merge takes its buffers from the pool");
            }
            assertEquals(held, pool.outstanding(), "and gives them back on close");
        }
    }
}
