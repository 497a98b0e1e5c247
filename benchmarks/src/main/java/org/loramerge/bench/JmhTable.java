package org.loramerge.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * Turns JMH's JSON results ({@code -rf json}) into GB/s of W, the figure the benchmarks are about,
 * and the ratios to the copy ceilings measured in the same run; prints markdown tables.
 *
 * <pre>
 *   java -cp benchmarks/target/benchmarks.jar org.loramerge.bench.JmhTable RESULT.json [MORE.json ...]
 * </pre>
 *
 * Bytes of W per op: the weight's bytes for CpuMergeBenchmark and CudaMergeBenchmark (shape x dtype),
 * the bytes copied for CudaCopyBenchmark, 16 weights of 4096x11008 BF16 for PipelineBenchmark, and
 * the weights as BF16 for the NF4 benchmarks, the block's elements as BF16 for CudaQuantBenchmark (the whole weight's for its
 * dequantizeOnDevice and requantizeOnDevice), the whole weight as BF16 for
 * every CudaCombineBenchmark method (its four adapters' selection, rounding and Δ kernels); CudaNf4Benchmark and
 * CudaQuantBenchmark's dequantizeOnDevice and requantizeOnDevice also get the bytes each kernel must move through device memory
 * ({@link #nf4Traffic}, {@link #dequantTraffic}, {@link #requantTraffic}), compared with the device-to-device copy's read and
 * write: "x D2D traffic", the kernel figure.
 */
public final class JmhTable {
    private JmhTable() {
    }

    /** One result row. */
    record Row(String benchmark, String method, String caseName, double msPerOp, double error, double gbPerSecond, double trafficGbPerSecond) {
    }

    public static void main(String[] args) throws IOException {
        if (args.length == 0 || args[0].equals("--help")) {
            System.out.println("usage: JmhTable RESULT.json [MORE.json ...]  (JMH's -rf json output)");
            System.exit(args.length == 0 ? 2 : 0);
        }
        List<Row> rows = new ArrayList<>();
        for (String a : args) {
            for (JsonNode r : new ObjectMapper().readTree(Path.of(a).toFile())) {
                rows.add(row(r));
            }
        }
        System.out.print(render(rows));
    }

    static Row row(JsonNode r) {
        String[] name = r.get("benchmark").asText().split("\\.");
        String bench = name[name.length - 2];
        String method = name[name.length - 1];
        JsonNode p = r.path("params");
        JsonNode metric = r.get("primaryMetric");
        double ms = toMillis(metric.get("score").asDouble(), metric.get("scoreUnit").asText());
        double err = toMillis(metric.path("scoreError").asDouble(Double.NaN), metric.get("scoreUnit").asText());
        double seconds = ms / 1e3;
        switch (bench) {
            case "CudaCopyBenchmark": {
                long bytes = p.get("bytes").asLong();
                return new Row(bench, method, String.format(Locale.ROOT, "%.0f MB", bytes / 1e6), ms, err, bytes / seconds / 1e9, Double.NaN);
            }
            case "CudaNf4Benchmark": {
                long[] s = shape(p.get("shape").asText());
                long n = s[0] * s[1];
                return new Row(bench, method, p.get("shape").asText() + " r" + p.path("rank").asText() + " BF16 bs64", ms, err,
                        n * 2 / seconds / 1e9, nf4Traffic(method, n, n / 64) / seconds / 1e9);
            }
            case "CudaQuantBenchmark": {
                long[] s = shape(p.get("shape").asText());
                if (method.equals("dequantizeOnDevice") || method.startsWith("requantize") && method.endsWith("OnDevice")) { // the whole weight
                    String format = p.get("format").asText();
                    double traffic = method.equals("dequantizeOnDevice") ? dequantTraffic(format, s[0] * s[1]) : requantTraffic(format, s[0] * s[1]);
                    String grid = method.equals("requantizeGroupsOnDevice") ? ", 1x128 groups" : "";
                    return new Row(bench, method, format + " " + p.get("shape").asText() + ", whole weight" + grid, ms, err,
                            s[0] * s[1] * 2 / seconds / 1e9, traffic / seconds / 1e9);
                }
                long n = p.get("blockRows").asLong() * s[1];
                return new Row(bench, method, p.get("format").asText() + " " + p.get("shape").asText() + ", " + p.get("blockRows").asText()
                        + "-row block r" + p.path("rank").asText(), ms, err, n * 2 / seconds / 1e9, Double.NaN);
            }
            case "CudaCombineBenchmark": { // the whole weight as BF16, whatever the kernel reads or writes
                long[] s = shape(p.get("shape").asText());
                return new Row(bench, method, p.get("shape").asText() + " r" + p.path("rank").asText() + " x4 BF16", ms, err,
                        s[0] * s[1] * 2 / seconds / 1e9, Double.NaN);
            }
            case "CudaExactBenchmark": // one 1024x4096 BF16 block (CudaExactBenchmark.ROWS, COLS), rank 16
                return new Row(bench, method, "1024x4096 BF16 block r16, " + p.path("factors").asText() + " factors", ms, err,
                        1024.0 * 4096 * 2 / seconds / 1e9, Double.NaN);
            case "Nf4Benchmark": {
                int weights = method.startsWith("fused") ? 4 : 1;
                return new Row(bench, method, "4096x11008 (as BF16)" + (weights > 1 ? " x4" : ""), ms, err,
                        weights * 4096.0 * 11008 * 2 / seconds / 1e9, Double.NaN);
            }
            case "PipelineBenchmark":
                return new Row(bench, method, p.path("device").asText(), ms, err, 16 * 4096.0 * 11008 * 2 / seconds / 1e9, Double.NaN);
            default: {
                long[] s = shape(p.get("shape").asText());
                int size = p.get("dtype").asText().equals("F32") ? 4 : 2;
                return new Row(bench, method, p.get("shape").asText() + " r" + p.get("rank").asText() + " " + p.get("dtype").asText(), ms, err,
                        (double) s[0] * s[1] * size / seconds / 1e9, Double.NaN);
            }
        }
    }

    static String render(List<Row> rows) {
        Map<String, Double> best = new LinkedHashMap<>();
        for (Row r : rows) {
            if (r.benchmark().equals("CudaCopyBenchmark")) {
                best.merge(r.method(), r.gbPerSecond(), Math::max);
            }
        }
        double h2d = best.getOrDefault("pinnedHostToDevice", Double.NaN);
        double d2d = best.getOrDefault("deviceToDevice", Double.NaN);
        boolean ceilings = !Double.isNaN(h2d) || !Double.isNaN(d2d);
        StringBuilder sb = new StringBuilder();
        sb.append(ceilings ? "| benchmark | case | ms/op | ± | GB/s of W | x pinned H2D | x D2D copy |\n| --- | --- | --- | --- | --- | --- | --- |\n"
                : "| benchmark | case | ms/op | ± | GB/s of W |\n| --- | --- | --- | --- | --- |\n");
        for (Row r : rows) {
            if (!r.benchmark().equals("CudaNf4Benchmark")) {
                sb.append(String.format(Locale.ROOT, "| %s.%s | %s | %.3f | %.3f | %s |", r.benchmark(), r.method(), r.caseName(),
                        r.msPerOp(), r.error(), gb(r.gbPerSecond())));
                sb.append(ceilings ? String.format(Locale.ROOT, " %.2f | %.2f |%n", r.gbPerSecond() / h2d, r.gbPerSecond() / d2d)
                        : System.lineSeparator());
            }
        }
        if (ceilings) {
            sb.append(String.format(Locale.ROOT, "%npinned H2D %.1f GB/s, device-to-device copy %.1f GB/s (bytes copied per second; D2D moves "
                    + "2x that through memory)%n", h2d, d2d));
        }
        if (rows.stream().anyMatch(r -> !Double.isNaN(r.trafficGbPerSecond()))) {
            sb.append("\n| kernel | case | ms/op | ± | GB/s of W (BF16) | device memory traffic GB/s | x D2D traffic |\n"
                    + "| --- | --- | --- | --- | --- | --- | --- |\n");
            for (Row r : rows) {
                if (!Double.isNaN(r.trafficGbPerSecond())) {
                    sb.append(String.format(Locale.ROOT, "| %s.%s | %s | %.3f | %.3f | %.1f | %.1f | %.2f |%n", r.benchmark(), r.method(), r.caseName(),
                            r.msPerOp(), r.error(), r.gbPerSecond(), r.trafficGbPerSecond(), r.trafficGbPerSecond() / (2 * d2d)));
                }
            }
            sb.append(String.format(Locale.ROOT, "%nD2D traffic: %.1f GB/s (read + write of a device-to-device copy); traffic counts the bytes "
                    + "each kernel must read and write%n", 2 * d2d));
        }
        return sb.toString();
    }

    /** GB/s with three significant digits (0.0312, 1.45, 197): CPU and GPU figures differ by four orders of magnitude. */
    static String gb(double v) {
        return v >= 100 ? String.format(Locale.ROOT, "%.0f", v) : String.format(Locale.ROOT, "%.3g", v);
    }

    /** Bytes a CudaNf4Benchmark method must move through device memory (BF16, blocksize 64). */
    static double nf4Traffic(String method, double n, double blocks) {
        double dequant = n / 2 + 4 * blocks + 2 * n;                       // codes + absmax in, BF16 out
        double requant = 12 * n + n + 32 * blocks;                         // X, W (BF16) and P (fp64) in; two code sets, absmax, sums out
        double merge = 8 * n + 12 * n;                                     // DGEMM writes P; merge-and-round reads W, P, writes X
        double finish = 4 * blocks + 9 * blocks + 9 * blocks + n + 40 * blocks; // offset sums, double quant, decode, measure
        switch (method) {
            case "dequantize": return dequant;
            case "requantize": return requant;
            case "fusedMergeToNf4": return dequant + merge + requant;
            case "doubleQuantAndMeasure": return finish;
            default: throw new IllegalArgumentException("no traffic model for CudaNf4Benchmark." + method);
        }
    }

    /**
     * Bytes CudaQuantBenchmark.dequantizeOnDevice must move for n elements of {@code format}: its
     * codes in, its dequantized dtype out (F32 for int8, 16-bit for the others); the scales, zeros
     * and absmax (under 2% of the codes) are left out, so the figure is a lower bound.
     */
    static double dequantTraffic(String format, double n) {
        switch (format) {
            case "fp4": case "gptq": case "awq": return n / 2 + 2 * n;
            case "fp8": return n + 2 * n;
            case "int8": return n + 4 * n;
            default: throw new IllegalArgumentException("no traffic model for CudaQuantBenchmark format " + format);
        }
    }

    /**
     * Bytes CudaQuantBenchmark.requantizeOnDevice must move for n elements of {@code format}
     * (kernels/quant.cu int8_requant, fp8_requant): the merged X and the base W in the dequantized
     * dtype (F32 for int8, BF16 for the benchmark's FP8 weight) and P in fp64 read, one code a
     * byte written; the scales and survival sums (44 bytes a quantization block: a row of int8, a
     * 128 x 128 block of FP8) are left out, as in {@link #dequantTraffic}. NaN for the formats
     * that have no such kernel (their requantizeOnDevice refuses to run).
     */
    static double requantTraffic(String format, double n) {
        switch (format) {
            case "int8": return 4 * n + 4 * n + 8 * n + n;
            case "fp8": return 2 * n + 2 * n + 8 * n + n;
            default: return Double.NaN;
        }
    }

    private static long[] shape(String s) {
        String[] p = s.split("x");
        return new long[] {Long.parseLong(p[0]), Long.parseLong(p[1])};
    }

    private static double toMillis(double v, String unit) {
        switch (unit) {
            case "s/op": return v * 1e3;
            case "ms/op": return v;
            case "us/op": return v / 1e3;
            case "ns/op": return v / 1e6;
            default: throw new IllegalArgumentException("JmhTable reads time per op (AverageTime, SingleShotTime), not " + unit);
        }
    }
}
