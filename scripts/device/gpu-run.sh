#!/usr/bin/env bash
# GPU tests and benchmarks on the GPU machine, which has CUDA but no Java, Maven or network.
#
#   scripts/device/gpu-run.sh pack          here: build the jars, the JUnit launcher and a Java runtime into .device/
#   then, through the device tool, from the repository root there (carry [".device"]):
#   bash scripts/device/gpu-run.sh device [tests] [verify] [nf4] [quant] [benchgpu] [benchnf4] [benchquant] [benchexact] [benchcpu] [e2e] [e2e2x] [extract] [unmerge] [benchsvd] [combine] [benchcombine] [benchcombinegpu] [batch] [tmpfs]
#
# "device" unpacks the runtime, runs the @Tag("gpu") tests (tests), the JMH throughput benchmarks
# (benchgpu: device-resident merge and copy ceilings; benchnf4: the NF4 kernels beside the
# device-to-device copy; benchquant: a streaming block of the FP4, int8, FP8, GPTQ and AWQ bases, host codec and device merge, beside
# the copies; benchexact: the exact-settling and DoRA norm kernels beside that copy; benchcpu: CPU engine and the pipeline), QLoRA end to end (nf4; SHAPE=llama-7b
# for the 7B shape), the other quantized bases of the 7B shape end to end beside their copy floors (quant),
# the 7B-shaped end-to-end benchmark (e2e) and the same at twice the size
# (e2e2x), extract of a 7B-shaped fine-tune on the GPU engine against cat of both checkpoints and the torch SVD anchors (extract),
# the 7B unmerge beside the merge and the copy floor (unmerge),
# the CPU truncated SVD's JMH benchmark (benchsvd), four adapters combined into the 7B shape (combine) and
# the CPU engine's combination passes in JMH (benchcombine), the GPU engine's combination kernels (selection, TIES and
# DARE-TIES rounding, combine_delta) beside the device-to-device copy in JMH (benchcombinegpu), loramerge batch of 16 adapters on a 3 GB base,
# shared pass against separate merges on one and two GPUs (batch), the 7B merge with base and output in /dev/shm, its
# stages and a sweep of the streaming knobs beside cp -r (tmpfs), writes logs under $OUT and prints a summary table last.
# Each step fits one device call of 10 minutes.
# The tests step fails (exit 1) when any GPU test fails, is skipped or aborted, or when none ran,
# and writes $OUT/last-gpu-run.json (commit, sources hash, card, date, counts) to commit as
# .ci/last-gpu-run.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-}
shift || true
JUNIT_VERSION=1.14.4
py=${PYTHON:-python3}   # the GPU machine's python3 has torch, transformers, peft and safetensors

case "$mode" in
pack)
  mvn -q -B -DskipTests install
  mkdir -p .device
  exclude=$(git rev-parse --git-path info/exclude)   # .git is a file in a worktree
  grep -qxF "/.device/" "$exclude" 2>/dev/null || echo "/.device/" >> "$exclude"
  cp target/loramerge-cli.jar .device/loramerge.jar   # the runnable jar, under the name the steps below use
  cp target/loramerge-tests.jar .device/
  if [ -f benchmarks/pom.xml ]; then
    (cd benchmarks && mvn -q -B -DskipTests clean package)
    cp benchmarks/target/benchmarks.jar .device/
  fi
  mvn -q -B dependency:copy -Dartifact=org.junit.platform:junit-platform-console-standalone:$JUNIT_VERSION -DoutputDirectory=.device
  scripts/device/make-jre.sh .device   # after the jars: its modules are the ones they need
  # what is being tested, for the record the tests step writes there (the device has no .git)
  { git rev-parse HEAD; git status --porcelain | grep -q . && echo dirty || echo clean; scripts/device/gpu-sources.sh; } > .device/build.txt
  du -sh .device
  ;;
device)
  OUT=${OUT:-/tmp/out}
  mkdir -p "$OUT"
  tar xzf .device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  # the class-data sharing archive a JDK install ships and a jlink'd runtime lacks (JVM start-up)
  java -Xshare:dump > /dev/null 2>&1 || true
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/card.txt"
  summary=()
  status=0
  # jmh NAME ARGS...: a JMH run whose failure (-foe: any benchmark that throws) fails this script, with its GB/s table
  jmh() {
    local name=$1
    shift
    local rc=0
    java -jar .device/benchmarks.jar "$@" -foe true -rf json -rff "$OUT/jmh-$name.json" > "$OUT/jmh-$name.log" 2>&1 || rc=$?
    if [ -s "$OUT/jmh-$name.json" ]; then
      java -cp .device/benchmarks.jar org.loramerge.bench.JmhTable "$OUT/jmh-$name.json" | tee "$OUT/jmh-$name.md" | tail -n 60
    fi
    if [ "$rc" != 0 ]; then
      status=1
      tail -n 30 "$OUT/jmh-$name.log"
    fi
    summary+=("jmh $name: exit $rc, $(grep -c '^| [A-Z]' "$OUT/jmh-$name.md" 2>/dev/null || echo 0) rows in jmh-$name.md")
  }
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
      count() { grep -E "\\[ *[0-9]+ tests $1 *\\]" "$OUT/gpu-tests.log" | grep -oE '[0-9]+' | head -1 || true; }
      ok=$(count successful); failed=$(count failed); skipped=$(count skipped); aborted=$(count aborted)
      ok=${ok:-0} failed=${failed:-0} skipped=${skipped:-0} aborted=${aborted:-0}
      verdict=passed
      if [ "$rc" != 0 ] || [ "$failed" != 0 ] || [ "$aborted" != 0 ] || [ "$skipped" != 0 ] || [ "$ok" = 0 ]; then
        verdict=failed   # on the GPU machine a skipped GPU test means the engine was not there: a failure
        status=1
      fi
      mapfile -t build < <(cat .device/build.txt 2>/dev/null || true)
      printf '{"commit": "%s", "tree": "%s", "gpu_sources": "%s", "card": "%s", "date": "%s", "successful": %s, "failed": %s, "skipped": %s, "aborted": %s, "verdict": "%s"}\n' \
        "${build[0]:-unknown}" "${build[1]:-unknown}" "${build[2]:-unknown}" "$(head -1 "$OUT/card.txt")" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$ok" "$failed" "$skipped" "$aborted" "$verdict" > "$OUT/last-gpu-run.json"
      summary+=("gpu tests: $verdict: $ok successful, $failed failed, $skipped skipped, $aborted aborted (launcher exit $rc)")
      ;;
    benchgpu)
      # device-resident merge over every shape, rank and dtype, and the copy ceilings; one fork and shorter
      # iterations than the annotations' (2 forks, 3 + 5 iterations) so that the 48 cases fit one device call
      jmh gpu 'CudaMergeBenchmark.mergeOnDevice|CudaCopyBenchmark' -f 1 -wi 2 -i 3 -w 500ms -r 500ms
      ;;
    benchnf4)
      # the NF4 kernels device-resident, beside the device-to-device copy (the annotations' forks and iterations)
      jmh nf4 'CudaNf4Benchmark|CudaCopyBenchmark.deviceToDevice'
      ;;
    benchquant)
      # each other quantized format: its device dequantization kernel over a whole weight, a streaming block merged on the device
      # (stored codes up), the host codec and the requantizing codec for comparison, beside the copies; one fork and short
      # iterations (20 cases, about 3 minutes); then the requantization kernels, which int8 and fp8 alone have, and FP8's
      # with groups of 128 columns (the copy is in jmh-quant)
      jmh quant 'CudaQuantBenchmark|CudaCopyBenchmark' -e 'requantize(Groups)?OnDevice' -f 1 -wi 2 -i 3 -w 500ms -r 500ms
      jmh requant 'CudaQuantBenchmark.requantizeOnDevice' -p format=int8,fp8 -f 1 -wi 2 -i 3 -w 500ms -r 500ms
      jmh requantgroups 'CudaQuantBenchmark.requantizeGroupsOnDevice' -p format=fp8 -f 1 -wi 2 -i 3 -w 500ms -r 500ms
      ;;
    benchexact)
      # the kernels that keep merges exact (add-and-round, exact settling with random and bf16-valued factors, DoRA's
      # row norms) on one streaming block, beside the device-to-device copy; short iterations to fit beside other steps
      jmh exact 'CudaExactBenchmark|CudaCopyBenchmark.deviceToDevice' -f 1 -wi 2 -i 3 -w 300ms -r 300ms
      ;;
    benchcpu)
      # CPU engine at ranks 16 and 64 in BF16 (a full CPU sweep takes hours at rank 256), and the pipeline file to file on both engines
      jmh cpu 'CpuMergeBenchmark|PipelineBenchmark' -p rank=16,64 -p dtype=BF16 -p device=cpu,cuda
      ;;
    verify)
      # loramerge verify on a GPU merge (1 GB Llama-shaped, rank 16), and --device auto's choice on the example
      "$py" scripts/bench/make_synthetic.py --out /tmp/lm-verify --shape 1gb --gen-device cuda > "$OUT/verify-gen.log" 2>&1
      rm -rf /tmp/lm-verify/out /tmp/lm-example
      java -jar .device/loramerge.jar merge --base /tmp/lm-verify/base --adapter /tmp/lm-verify/adapter --out /tmp/lm-verify/out \
        --device cuda --quiet --json > "$OUT/verify-merge.json"
      set +e
      java -jar .device/loramerge.jar verify --base /tmp/lm-verify/base --adapter /tmp/lm-verify/adapter --merged /tmp/lm-verify/out \
        --max-ulp 0 2>&1 | tee "$OUT/verify.log" | head -5
      vrc=${PIPESTATUS[0]}
      set -e
      java -jar .device/loramerge.jar merge --base examples/tiny-llama/base --adapter examples/tiny-llama/adapter --out /tmp/lm-example 2>&1 | head -3
      summary+=("verify of the GPU merge: exit $vrc; $(grep -m1 '^verify:' "$OUT/verify.log" | head -c 200)")
      ;;
    nf4)
      bash scripts/bench/bench-nf4-gpu.sh 2>&1 | tail -n 16
      summary+=("nf4 (${SHAPE:-llama-7b}): see nf4-table.md")
      ;;
    quant)
      # the FP8, int8, GPTQ, AWQ and FP4 bases of the 7B shape: --to bf16 and the requantizing merges beside the copy floors;
      # writes quant-table.md and quant.log under $OUT (rows past its time budget are listed as skipped)
      OUT=$OUT bash scripts/bench/bench-quant-gpu.sh 2>&1 | tail -n 40
      summary+=("quant (7B, FP8/int8/GPTQ/AWQ/FP4): see quant-table.md")
      ;;
    e2e)
      LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench/bench-e2e-gpu.sh 2>&1 | tee "$OUT/e2e.log" | tail -n 25
      summary+=("e2e: see e2e.log")
      ;;
    e2e2x)
      LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench/bench-e2e-gpu.sh --scale 2 2>&1 | tee "$OUT/e2e2x.log" | tail -n 25
      summary+=("e2e 2x: see e2e2x.log")
      ;;
    extract)
      LORAMERGE="java -Xmx2g -jar .device/loramerge.jar" bash scripts/bench/bench-extract-gpu.sh 2>&1 | tee "$OUT/extract.log" | tail -n 20
      summary+=("extract: see extract.log")
      ;;
    unmerge)
      # the 7B e2e with the unmerge beside the merge and the copy floor (PEFT and the CPU engine left out)
      RUN_UNMERGE=1 SKIP_PEFT=1 SKIP_LM_CPU=1 LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench/bench-e2e-gpu.sh 2>&1 \
        | tee "$OUT/unmerge.log" | tail -n 25
      summary+=("unmerge: see unmerge.log")
      ;;
    benchsvd)
      # the truncated SVD of extract on a 4096x4096 ΔW at rank 64, all cores (the setup's exact optimum takes a while)
      java -jar .device/benchmarks.jar SvdBenchmark -rf json -rff "$OUT/jmh-svd.json" -f 1 -wi 1 -i 3 > "$OUT/jmh-svd.log" 2>&1 || true
      grep -E "SvdBenchmark\]|^SvdBenchmark" "$OUT/jmh-svd.log" | tee "$OUT/jmh-svd.md"
      summary+=("jmh svd: see jmh-svd.md")
      ;;
    combine)
      LORAMERGE="java -Xmx2g -jar .device/loramerge.jar" bash scripts/bench/bench-combine-gpu.sh 2>&1 | tee "$OUT/combine.log" | tail -n 40
      summary+=("combine (four adapters): see combine.log")
      ;;
    benchcombine)
      # the CPU engine's selection passes, TIES and DARE-TIES rows and the exact several-term merge
      jmh combine CombineBenchmark -f 1 -wi 1 -i 2 -w 1s -r 1s
      ;;
    benchcombinegpu)
      # the GPU engine's combination kernels: selection passes, TIES and DARE-TIES rounding, combine_delta; beside the D2D copy
      jmh combinegpu 'CudaCombineBenchmark|CudaCopyBenchmark.deviceToDevice' -f 1 -wi 2 -i 3 -w 300ms -r 300ms
      ;;
    batch)
      LORAMERGE="java -jar .device/loramerge.jar" bash scripts/bench/bench-batch-gpu.sh 2>&1 | tee "$OUT/batch.log" | tail -n 15
      summary+=("batch (16 adapters, one base): see batch.log")
      ;;
    tmpfs)
      # writes tmpfs.log and tmpfs-table.md under $OUT
      OUT=$OUT bash scripts/bench/bench-tmpfs-gpu.sh 2>&1 | tail -n 40
      summary+=("tmpfs (7B from memory, stages, knob sweep): see tmpfs-table.md")
      ;;
    *) echo "unknown step $step"; exit 2 ;;
    esac
  done
  echo
  echo "== summary ($(cat "$OUT/card.txt"))"
  printf '%s\n' "${summary[@]}"
  exit $status
  ;;
*)
  sed -n 2,10p "$0"
  exit 2
  ;;
esac
