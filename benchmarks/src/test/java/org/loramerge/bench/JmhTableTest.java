package org.loramerge.bench;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.List;
import org.junit.jupiter.api.Test;

/** JmhTable's device memory traffic of the quantized formats' kernels, and its ratio to the copy's, from JMH's JSON. */
class JmhTableTest {
    private static JsonNode result(String benchmark, String params, double msPerOp) throws Exception {
        return new ObjectMapper().readTree("{\"benchmark\":\"org.loramerge.bench." + benchmark + "\",\"params\":" + params
                + ",\"primaryMetric\":{\"score\":" + msPerOp + ",\"scoreError\":0.001,\"scoreUnit\":\"ms/op\"}}");
    }

    @Test
    void requantizingKernelsCountXWAndPReadAndOneCodeByteWritten() throws Exception {
        // 11008 x 4096 elements at 0.2 ms: int8 moves 17 bytes an element (F32 X and W, fp64 P, a code), FP8 13 (BF16 X and W)
        double n = 11008.0 * 4096;
        JmhTable.Row int8 = JmhTable.row(result("CudaQuantBenchmark.requantizeOnDevice", "{\"format\":\"int8\",\"shape\":\"11008x4096\"}", 0.2));
        JmhTable.Row fp8 = JmhTable.row(result("CudaQuantBenchmark.requantizeOnDevice", "{\"format\":\"fp8\",\"shape\":\"11008x4096\"}", 0.2));
        assertEquals(17 * n / 0.2e-3 / 1e9, int8.trafficGbPerSecond(), 1e-6);
        assertEquals(13 * n / 0.2e-3 / 1e9, fp8.trafficGbPerSecond(), 1e-6);
        // groups of 128 columns move the same bytes (the scales and sums left out, as for 128 x 128 blocks), named apart
        JmhTable.Row groups = JmhTable.row(result("CudaQuantBenchmark.requantizeGroupsOnDevice", "{\"format\":\"fp8\",\"shape\":\"11008x4096\"}", 0.2));
        assertEquals(13 * n / 0.2e-3 / 1e9, groups.trafficGbPerSecond(), 1e-6);
        assertTrue(groups.caseName().endsWith("whole weight, 1x128 groups"), groups.caseName());
        // the 4-bit formats have no such kernel: no traffic figure rather than a made-up one
        JmhTable.Row awq = JmhTable.row(result("CudaQuantBenchmark.requantizeOnDevice", "{\"format\":\"awq\",\"shape\":\"11008x4096\"}", 0.01));
        assertTrue(Double.isNaN(awq.trafficGbPerSecond()));
    }

    @Test
    void theTrafficTableSetsEachKernelAgainstTheCopysReadAndWrite() throws Exception {
        // a copy of 1e9 bytes in 0.5 ms: 2000 GB/s copied, 4000 GB/s of traffic; int8_requant of 2000 x 1000 elements
        // (34 MB) in 0.017 ms: 2000 GB/s of traffic, 0.50 of the copy's; fp4 dequantize (2.5 bytes an element) in 0.005 ms: 1000 GB/s, 0.25
        List<JmhTable.Row> rows = List.of(
                JmhTable.row(result("CudaCopyBenchmark.deviceToDevice", "{\"bytes\":\"1000000000\"}", 0.5)),
                JmhTable.row(result("CudaQuantBenchmark.requantizeOnDevice", "{\"format\":\"int8\",\"shape\":\"2000x1000\"}", 0.017)),
                JmhTable.row(result("CudaQuantBenchmark.dequantizeOnDevice", "{\"format\":\"fp4\",\"shape\":\"2000x1000\"}", 0.005)));
        String table = JmhTable.render(rows);
        assertTrue(table.contains("| CudaQuantBenchmark.requantizeOnDevice | int8 2000x1000, whole weight | 0.017 | 0.001 | 235.3 | 2000.0 | 0.50 |"),
                table);
        assertTrue(table.contains("| CudaQuantBenchmark.dequantizeOnDevice | fp4 2000x1000, whole weight | 0.005 | 0.001 | 800.0 | 1000.0 | 0.25 |"),
                table);
        assertTrue(table.contains("D2D traffic: 4000.0 GB/s"), table);
    }
}
