package org.loramerge.verify;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.loramerge.format.Checkpoint;
import org.loramerge.format.DType;
import org.loramerge.format.FloatFormat;
import org.loramerge.testutil.TensorFiles;

import static org.junit.jupiter.api.Assertions.assertEquals;

/** unmerge --base's distance report: counted chunk by chunk on several threads, the same as one pass over every element. */
class UlpDistanceTest {
    @TempDir
    Path dir;

    @Test
    void theCountsAndWorstDistancesAreThoseOfOneSequentialPassWhateverTheThreads() throws Exception {
        SplittableRandom rnd = new SplittableRandom(11);
        int big = 2_500_001; // three chunks, the last one short
        int small = 1000;
        double[][] base = {gaussian(rnd, big), gaussian(rnd, small)};
        double[][] result = new double[2][];
        double[][] merged = new double[2][];
        FloatFormat bf16 = FloatFormat.of(DType.BF16);
        for (int k = 0; k < 2; k++) {
            result[k] = base[k].clone();
            merged[k] = base[k].clone();
            for (int i = 0; i < result[k].length; i++) {
                merged[k][i] = base[k][i] + rnd.nextGaussian() * 0.1;
                double x = bf16.round(base[k][i]);
                int move = rnd.nextInt(100);
                // most equal, some one ulp away, a few further, one NaN pair, one infinity
                result[k][i] = move < 80 ? x : move < 95 ? bf16.nextUp(x) : move < 99 ? bf16.nextDown(bf16.nextDown(x)) : x * 1.5;
            }
        }
        base[0][7] = Double.NaN;
        result[0][7] = Double.NaN;
        result[1][3] = Double.POSITIVE_INFINITY;
        Path r = model("result", result);
        Path o = model("original", base);
        Path m = model("merged", merged);
        List<String> names = List.of("a.weight", "b.weight");
        try (Checkpoint rc = Checkpoint.open(r); Checkpoint oc = Checkpoint.open(o); Checkpoint mc = Checkpoint.open(m)) {
            UlpDistance.Result one = UlpDistance.measure(rc, oc, mc, names, 1);
            UlpDistance.Result many = UlpDistance.measure(rc, oc, mc, names, 4);
            assertEquals(one, many);
            // an independent count, element by element
            long equal = 0;
            long within = 0;
            long beyond = 0;
            double worst = 0;
            for (int k = 0; k < 2; k++) {
                for (int i = 0; i < base[k].length; i++) {
                    double x = bf16.round(result[k][i]);
                    double y = bf16.round(base[k][i]);
                    if (x == y || Double.isNaN(x) && Double.isNaN(y)) {
                        equal++;
                    } else {
                        double ulps = Double.isFinite(x) ? Math.abs(x - y) / bf16.ulp(y) : Double.POSITIVE_INFINITY;
                        worst = Math.max(worst, ulps);
                        if (ulps <= 1) {
                            within++;
                        } else {
                            beyond++;
                        }
                    }
                }
            }
            assertEquals(big + small, many.elements());
            assertEquals(equal, many.equal());
            assertEquals(within, many.withinOneUlp());
            assertEquals(beyond, many.beyondOneUlp());
            assertEquals(worst, many.worstUlp());
            assertEquals(big, many.tensors().get(0).elements());
            assertEquals("b.weight", many.tensors().get(1).name());
        }
    }

    private static double[] gaussian(SplittableRandom rnd, int n) {
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = rnd.nextGaussian() * 0.02;
        }
        return v;
    }

    private Path model(String name, double[][] values) throws Exception {
        Path d = Files.createDirectories(dir.resolve(name));
        Files.writeString(d.resolve("config.json"), "{}");
        new TensorFiles().add("a.weight", DType.BF16, new long[] {values[0].length}, values[0])
                .add("b.weight", DType.BF16, new long[] {values[1].length}, values[1])
                .write(d.resolve("model.safetensors")).close();
        return d;
    }
}
