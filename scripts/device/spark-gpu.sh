#!/usr/bin/env bash
# The Spark job's GPU test on the GPU machine (which has CUDA but no Java, Maven, Spark or network):
# SparkBatchGpuTest runs the job in local-cluster mode with two GPU resources found by a discovery
# script, one per task, and checks that both GPUs merged and wrote the CPU engine's bytes.
#
#   scripts/device/spark-gpu.sh pack        here: the core installed, the spark module compiled, its
#                                           test class path (Spark and Hadoop: about 240 MB), the JUnit
#                                           launcher and a Java runtime, packed and cut into parts of
#                                           40 MiB (with the 16 MB working tree, under the 64 MiB a
#                                           device call carries): .spark-device/part-NN-of-MM (git-ignored)
#   then through the device tool, from the repository root there, one call per part, each carrying
#   [".spark-device/part-NN-of-MM"] with the command "true" (a warm machine keeps ignored paths
#   between calls), and last, carrying the last part:
#   bash scripts/device/spark-gpu.sh device
#
# "device" joins the parts, runs the test class through the JUnit console launcher, writes the log and
# the JUnit report under $OUT, and fails when a test fails or the GPU test was skipped (fewer than two GPUs).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
JUNIT_VERSION=1.14.4
PART_BYTES=$((40 * 1024 * 1024))
# the module options Spark 4 needs on Java 17, as spark/pom.xml gives surefire
OPENS="-XX:+IgnoreUnrecognizedVMOptions -Djdk.reflect.useDirectMethodHandle=false -Dio.netty.tryReflectionSetAccessible=true"
for p in java.lang java.lang.invoke java.lang.reflect java.io java.net java.nio java.util java.util.concurrent \
         java.util.concurrent.atomic jdk.internal.ref sun.nio.ch sun.nio.cs sun.security.action sun.util.calendar; do
  OPENS="$OPENS --add-opens=java.base/$p=ALL-UNNAMED"
done

case "$mode" in
pack)
  mvn -q -B -ntp -DskipTests install
  stage=$(mktemp -d)
  mkdir -p "$stage/lib"
  (cd spark && mvn -q -B -ntp test-compile dependency:copy-dependencies -DincludeScope=test -DoutputDirectory="$stage/lib")
  (cd spark/target && jar cf "$stage/lib/loramerge-spark-tests.jar" -C test-classes . -C classes .)
  mvn -q -B -ntp dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:$JUNIT_VERSION -DoutputDirectory="$stage"
  EXTRA_MODULES=jdk.incubator.vector,jdk.unsupported,java.management,jdk.management,java.sql,java.naming,java.security.jgss,jdk.security.auth,jdk.crypto.ec,java.net.http \
    scripts/device/make-jre.sh "$stage" "$stage"/lib/*.jar "$stage"/junit-platform-console-standalone-$JUNIT_VERSION.jar
  git rev-parse HEAD > "$stage/build.txt"
  rm -rf .spark-device
  mkdir -p .spark-device
  tar cf - -C "$stage" . | split -b $PART_BYTES -d -a 2 - .spark-device/part-
  rm -rf "$stage"
  n=$(ls .spark-device | wc -l)
  for f in .spark-device/part-*; do mv "$f" "$f-of-$(printf %02d "$n")"; done
  ls -l .spark-device
  echo "carry each of these in its own device call (command: true), then run 'bash scripts/device/spark-gpu.sh device' carrying the last"
  ;;
device)
  OUT=${OUT:-/tmp/out}
  mkdir -p "$OUT"
  parts=(.spark-device/part-*)
  total=${parts[0]##*-of-}
  if ((${#parts[@]} != 10#$total)); then
    echo "spark-gpu: ${#parts[@]} of $total parts are here (${parts[*]}); carry the missing ones first" >&2
    exit 2
  fi
  rm -rf /tmp/spark-device /tmp/jre
  mkdir -p /tmp/spark-device
  cat "${parts[@]}" | tar xf - -C /tmp/spark-device
  tar xzf /tmp/spark-device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  nvidia-smi --query-gpu=index,name --format=csv,noheader | tee "$OUT/cards.txt" || echo "spark-gpu: no nvidia-smi here"
  # as spark/pom.xml sets them for surefire: an empty Spark home for local-cluster's workers, loopback only
  export SPARK_HOME=/tmp/spark-home SPARK_SCALA_VERSION=2.13 SPARK_LOCAL_IP=127.0.0.1
  mkdir -p "$SPARK_HOME/jars"
  cp=$(ls /tmp/spark-device/lib/*.jar | tr '\n' ':')/tmp/spark-device/junit-platform-console-standalone-$JUNIT_VERSION.jar
  rc=0
  # the class path on the command line: the test gives it to the executors it starts
  # shellcheck disable=SC2086
  java -Xmx2g $OPENS -cp "$cp" org.junit.platform.console.ConsoleLauncher execute \
    --select-class org.loramerge.spark.SparkBatchGpuTest --reports-dir "$OUT" --details summary \
    > "$OUT/spark-gpu.log" 2>&1 || rc=$?
  grep -E "tests (successful|failed|skipped|aborted)" "$OUT/spark-gpu.log" || true
  if ((rc == 0)) && grep -qE "[1-9][0-9]* tests (skipped|aborted)" "$OUT/spark-gpu.log"; then
    echo "spark-gpu: the GPU test was skipped or aborted (two usable GPUs needed): see $OUT/spark-gpu.log" >&2
    rc=1
  fi
  echo "spark-gpu: $( ((rc == 0)) && echo passed || echo FAILED ) on $(cat /tmp/spark-device/build.txt)"
  exit $rc
  ;;
*)
  echo "usage: scripts/device/spark-gpu.sh pack|device" >&2
  exit 2
  ;;
esac
