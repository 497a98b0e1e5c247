#!/usr/bin/env bash
# The JMH benchmarks from a clean clone: builds and installs the engine (mvn install, tests skipped),
# builds benchmarks/ against it, runs JMH and prints GB/s of W (org.loramerge.bench.JmhTable).
#
#   scripts/bench/jmh.sh                the CPU suite: CpuMergeBenchmark on 4096x11008 at ranks 16 and 64 in
#                                       BF16, F16 and F32, PipelineBenchmark (file to file, CPU engine) and
#                                       Nf4Benchmark; a quarter of an hour or more on 2 cores
#   scripts/bench/jmh.sh ARGS...        JMH's own arguments instead, e.g. CpuMergeBenchmark (all 48 cases),
#                                       'CpuMergeBenchmark' -p dtype=BF16, or -l to list the benchmarks
#   OUT=DIR                             where jmh.json, jmh.log and jmh.md go (default target/jmh)
#
# Forks, warm-up and measured iterations are the benchmarks' own (@Fork, @Warmup, @Measurement);
# any benchmark that fails fails the script (JMH -foe). The GPU benchmarks need the GPU machine:
# scripts/device/gpu-run.sh (steps benchgpu, benchnf4, benchcpu).
set -euo pipefail
case "${1:-}" in
-h|--help) sed -n 2,16p "$0"; exit 0 ;;
esac
cd "$(dirname "$0")/../.."
out=${OUT:-target/jmh}
mvn -q -B -DskipTests install
mvn -q -B -f benchmarks/pom.xml package
jar=benchmarks/target/benchmarks.jar
mkdir -p "$out"
if (($# == 0)); then
    set -- 'CpuMergeBenchmark|PipelineBenchmark|Nf4Benchmark' -p shape=4096x11008 -p rank=16,64
fi
if [[ " $* " == *" -l "* || " $* " == *" -h "* ]]; then
    exec java -jar "$jar" "$@"
fi
java -jar "$jar" "$@" -foe true -rf json -rff "$out/jmh.json" 2>&1 | tee "$out/jmh.log"
rc=${PIPESTATUS[0]}
if [[ -s $out/jmh.json ]]; then
    java -cp "$jar" org.loramerge.bench.JmhTable "$out/jmh.json" | tee "$out/jmh.md"
fi
exit "$rc"
