#!/usr/bin/env bash
# End-to-end benchmark for the GPU machine, in one device call (no network, no Java there).
#
#   bash scripts/bench/bench-e2e-gpu.sh [--scale 1|2] [--reps N]
#
# Needs, carried with the working tree:  .device/jre.tgz  (scripts/device/make-jre.sh, here)
#                                         target/loramerge-cli.jar (mvn -DskipTests package, here)
# e.g. run(command="bash scripts/bench/bench-e2e-gpu.sh", carry=[".device", "target/loramerge-cli.jar"])
#
# What it does
#   1. unpacks the runtime to /tmp/jre (when `java` is missing) and puts it on PATH;
#   2. generates the llama-7b preset (13.48 GB bf16, 3 shards, rank-16 adapter on all 7
#      projections) on the GPU into $WORK, then `sync` (reused if already there);
#      --scale 2 makes 64 layers / 6 shards (~26.4 GB) for the memory-bound check;
#   3. warms the page cache (cat > /dev/null);
#   4. times, each as a fresh process + sync, order rotating per repetition:
#        cp              cp -r base (the copy floor)
#        peft-cuda       scripts/bench/peft_merge.py --device cuda (the PEFT recipe, the anchor)
#        peft-cpu        the same with --device cpu           (only with RUN_PEFT_CPU=1)
#        loramerge-cuda  loramerge merge --device cuda
#        loramerge-cpu   loramerge merge --device cpu
#      with peak host RSS (process tree) and peak device memory (nvidia-smi, minus idle);
#   5. checks loramerge-cuda vs peft-cuda numerically (names/shapes/dtypes, <= 1 bf16 ulp;
#      done when the disk holds both outputs, i.e. at scale 1) and loramerge-cuda vs
#      loramerge-cpu byte for byte (sha256 of every output file);
#   6. prints a short table last. Everything is logged under $OUT (default /tmp/out).
#
# Environment: OUT, WORK (default /tmp/lm-bench-$SHAPE-x$SCALE), SHAPE (llama-7b), REPS (default 2; 1 at scale 2),
#   BUDGET_S (default 500: no new repetition starts that would end later than that many
#   seconds after the script started, and a run still going then is ended), PYTHON (python3), LORAMERGE (default "java $JAVA_OPTS -jar
#   target/loramerge-cli.jar"), LM_ARGS (extra merge options), RANK (16), SEED (0),
#   SKIP_CP=1 SKIP_PEFT=1 SKIP_LM_CUDA=1 SKIP_LM_CPU=1 SKIP_VERIFY=1 RUN_PEFT_CPU=1 REGEN=1;
#   RUN_UNMERGE=1 (also times `loramerge unmerge --device cuda` of the adapter out of the base, as "unmerge-cuda");
#   LORAMERGE_B (another build, e.g. "java -jar old.jar", run as "${LABEL_B:-before}-cuda" beside
#   loramerge-cuda and compared with it byte for byte: a before/after check in one call).
set -euo pipefail
export BENCH_T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

SCALE=1
REPS_ARG=
while [ $# -gt 0 ]; do
  case $1 in
    --scale) SCALE=$2; shift 2 ;;
    --scale=*) SCALE=${1#*=}; shift ;;
    --reps) REPS_ARG=$2; shift 2 ;;
    --reps=*) REPS_ARG=${1#*=}; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case $SCALE in 1|2|3|4) ;; *) echo "--scale must be 1..4" >&2; exit 2 ;; esac
if [ "$SCALE" = 1 ]; then REPS=${REPS_ARG:-${REPS:-2}}; else REPS=${REPS_ARG:-${REPS:-1}}; fi
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
SEED=${SEED:-0}
BUDGET_S=${BUDGET_S:-500}
SHAPE=${SHAPE:-llama-7b}   # another preset (tiny, 1gb, 3gb) only to try the script out
case $SHAPE in
  llama-7b) L0=32 K0=3 ;; 3gb) L0=17 K0=2 ;; 1gb) L0=8 K0=2 ;; tiny) L0=2 K0=2 ;;
  *) echo "SHAPE must be llama-7b, 3gb, 1gb or tiny" >&2; exit 2 ;;
esac
WORK=${WORK:-/tmp/lm-bench-$SHAPE-x$SCALE}
LAYERS=$((L0 * SCALE))
SHARDS=$((K0 * SCALE))
mkdir -p "$OUT" "$WORK"
exec 3>&2
PROGRESS=$OUT/progress.log
say() { echo "[bench-gpu $(awk -v t0="$BENCH_T0" -v t="$(date +%s.%N)" 'BEGIN{printf "%5.0f", t-t0}')s] $*" | tee -a "$PROGRESS" >&3; }

# ---- Java
if ! command -v java >/dev/null 2>&1; then
  if [ -f .device/jre.tgz ]; then
    rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
    export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  else
    say "no java and no .device/jre.tgz: loramerge runs left out"
    SKIP_LM_CUDA=1 SKIP_LM_CPU=1
  fi
fi
JAR=$ROOT/target/loramerge-cli.jar
if [ -z "${LORAMERGE:-}" ] && [ ! -f "$JAR" ]; then
  say "no $JAR (carry it): loramerge runs left out"
  SKIP_LM_CUDA=1 SKIP_LM_CPU=1
fi
LORAMERGE=${LORAMERGE:-java ${JAVA_OPTS:-} -jar $JAR}
LM_ARGS=${LM_ARGS:-}

# ---- synthetic checkpoint, generated on the GPU
# other scales' leftovers would eat the disk (64 GB): remove them
for d in /tmp/lm-bench-*-x*; do [ -d "$d" ] && [ "$d" != "$WORK" ] && rm -rf "$d"; done
rm -rf "$WORK"/out-*
STAMP="$SHAPE layers=$LAYERS shards=$SHARDS rank=$RANK seed=$SEED"
if [ -n "${REGEN:-}" ] || [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$STAMP" ]; then
  say "generating $STAMP into $WORK"
  rm -f "$WORK/.stamp"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK" --shape "$SHAPE" --layers "$LAYERS" --shards "$SHARDS" \
    --rank "$RANK" --seed "$SEED" --gen-device auto --force >"$OUT/make_synthetic.log" 2>&1 \
    || { cat "$OUT/make_synthetic.log" >&3; exit 1; }
  grep -E "base:|adapter:" "$OUT/make_synthetic.log" | sed 's/^/    /' >&3 || true
  say "generated; sync"
  sync
  echo "$STAMP" >"$WORK/.stamp"
  say "synced"
else
  say "reusing $WORK ($STAMP)"
fi

# ---- machine info
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  nproc: $(nproc)"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "memory: $(free -g | awk '/^Mem:/{print $2" GiB total, "$7" GiB available"}')  disk free: $(df -h --output=avail "$WORK" | tail -1 | tr -d ' ')"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd';')"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "python: $("$PY" -c 'import sys,torch,transformers,peft,safetensors;print(sys.version.split()[0],"torch",torch.__version__,"transformers",transformers.__version__,"peft",peft.__version__,"safetensors",safetensors.__version__)' 2>/dev/null)"
  echo "model: $SHAPE x$SCALE ($LAYERS layers), $(du -sb "$WORK/base" | cut -f1 | awk '{printf "%.2f GB", $1/1e9}') in $SHARDS shards; adapter r=$RANK; reps=$REPS"
  echo "loramerge: $LORAMERGE $LM_ARGS"
} >"$OUT/machine.txt" 2>&1

# ---- warm the page cache
say "warming page cache"
ls "$WORK"/base/* "$WORK"/adapter/* | xargs -P 8 -n 1 sh -c 'cat "$0" >/dev/null'
[ -f "$JAR" ] && cat "$JAR" >/dev/null
say "warm"

# ---- timed runs
MERGE="merge --base {base} --adapter {adapter} --out {out}"
TOOLS=()
[ -z "${SKIP_CP:-}" ] && TOOLS+=(--tool "cp=cp -r {base} {out}")
[ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-cuda=$PY scripts/bench/peft_merge.py --base {base} --adapter {adapter} --out {out} --device cuda")
[ -n "${RUN_PEFT_CPU:-}" ] && TOOLS+=(--tool "peft-cpu=$PY scripts/bench/peft_merge.py --base {base} --adapter {adapter} --out {out} --device cpu")
[ -z "${SKIP_LM_CUDA:-}" ] && TOOLS+=(--tool "loramerge-cuda=$LORAMERGE $MERGE --device cuda $LM_ARGS")
[ -z "${SKIP_LM_CPU:-}" ] && TOOLS+=(--tool "loramerge-cpu=$LORAMERGE $MERGE --device cpu $LM_ARGS")
# unmerge of the adapter out of the base taken as a merged model: the same engine path as a merge, with the terms negated
[ -n "${RUN_UNMERGE:-}" ] && TOOLS+=(--tool "unmerge-cuda=$LORAMERGE unmerge --merged {base} --adapter {adapter} --out {out} --device cuda $LM_ARGS")
B=${LABEL_B:-before}-cuda
[ -n "${LORAMERGE_B:-}" ] && TOOLS+=(--tool "$B=$LORAMERGE_B $MERGE --device cuda $LM_ARGS")
if [ ${#TOOLS[@]} -eq 0 ]; then say "nothing to run"; exit 1; fi
if [ -n "${LORAMERGE_B:-}" ]; then
  VERIFY=(--verify-bytes "$B,loramerge-cuda")
else
  VERIFY=(--verify-bytes loramerge-cuda,loramerge-cpu)
fi
[ -z "${SKIP_VERIFY:-}" ] && [ -z "${SKIP_PEFT:-}" ] && VERIFY+=(--verify-numeric peft-cuda,loramerge-cuda)
BASELINE=peft-cuda
if [ -n "${SKIP_PEFT:-}" ]; then
  BASELINE=$([ -n "${RUN_PEFT_CPU:-}" ] && echo peft-cpu || echo cp)
fi

set +e
"$PY" scripts/bench/bench_run.py --base "$WORK/base" --adapter "$WORK/adapter" --work "$WORK" --logs "$OUT" \
  --reps "$REPS" --gpu --budget-s "$BUDGET_S" --python "$PY" --baseline "$BASELINE" --floor cp \
  "${VERIFY[@]}" "${TOOLS[@]}" >"$OUT/table.out" 2>&3
rc=$?
set -e
rm -rf "$WORK"/out-*
say "done (rc $rc)"
{
  echo
  echo "## loramerge end-to-end, GPU machine, $SHAPE x$SCALE"
  sed 's/^/    /' "$OUT/machine.txt"
  echo
  cat "$OUT/table.out"
  echo
  echo "wall = fresh process + sync, page cache warm; peak GPU = nvidia-smi used minus idle; logs: $OUT"
} | tee "$OUT/summary.md"
exit $rc
