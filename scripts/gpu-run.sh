#!/usr/bin/env bash
# GPU tests and benchmarks on the GPU machine, which has CUDA but no Java, Maven or network.
#
#   scripts/gpu-run.sh pack          here: build the jars, the JUnit launcher and a Java runtime into .device/
#   then, through the device tool, from the repository root there (carry [".device"]):
#   bash scripts/gpu-run.sh device [tests] [bench] [e2e] [e2e2x]
#
# "device" unpacks the runtime, runs the @Tag("gpu") tests (tests), the JMH throughput benchmarks
# (bench), the 7B-shaped end-to-end benchmark (e2e) and the same at twice the size (e2e2x), writes
# logs under $OUT and prints a summary table last.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
shift || true
JUNIT_VERSION=1.14.4

case "$mode" in
pack)
  mvn -q -B -DskipTests install
  mkdir -p .device
  grep -qxF "/.device/" .git/info/exclude 2>/dev/null || echo "/.device/" >> .git/info/exclude
  cp target/loramerge.jar target/loramerge-tests.jar .device/
  if [ -f benchmarks/pom.xml ]; then
    (cd benchmarks && mvn -q -B -DskipTests package)
    cp benchmarks/target/benchmarks.jar .device/
  fi
  mvn -q -B dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:$JUNIT_VERSION -DoutputDirectory=.device
  [ -f .device/jre.tgz ] || ../shared/device/make-jre.sh .device
  du -sh .device
  ;;
device)
  OUT=${OUT:-/tmp/out}
  mkdir -p "$OUT"
  tar xzf .device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
  summary=()
  for step in "${@:-tests}"; do
    case "$step" in
    tests)
      set +e
      java -jar .device/junit-platform-console-standalone-$JUNIT_VERSION.jar execute \
        --class-path .device/loramerge.jar:.device/loramerge-tests.jar --scan-class-path --include-tag gpu \
        --details=tree --disable-banner > "$OUT/gpu-tests.log" 2>&1
      rc=$?
      set -e
      tail -n 40 "$OUT/gpu-tests.log"
      summary+=("gpu tests: exit $rc; $(grep -E 'tests (successful|failed|skipped|aborted)' "$OUT/gpu-tests.log" | tr -s ' ' | tr '\n' ';')")
      ;;
    bench)
      java -jar .device/benchmarks.jar -rf json -rff "$OUT/jmh.json" -f 1 -wi 2 -i 3 -w 1s -r 1s 2>&1 | tee "$OUT/jmh.log" | grep -E "^Benchmark|^[A-Za-z].*(thrpt|avgt)" || true
      summary+=("jmh: $(grep -cE '(thrpt|avgt)' "$OUT/jmh.log") results in jmh.json")
      ;;
    e2e)
      LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench-e2e-gpu.sh 2>&1 | tee "$OUT/e2e.log" | tail -n 25
      summary+=("e2e: see e2e.log")
      ;;
    e2e2x)
      LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench-e2e-gpu.sh --scale 2 2>&1 | tee "$OUT/e2e2x.log" | tail -n 25
      summary+=("e2e 2x: see e2e2x.log")
      ;;
    *) echo "unknown step $step"; exit 2 ;;
    esac
  done
  echo
  echo "== summary ($(cat "$OUT/card.txt"))"
  printf '%s\n' "${summary[@]}"
  ;;
*)
  sed -n 2,10p "$0"
  exit 2
  ;;
esac
