#!/usr/bin/env bash
# Several adapters in one pass, end to end on the GPU machine, in one device call (no network, no Java there).
#
#   bash scripts/bench/bench-combine-gpu.sh [--reps N]
#
# Needs, carried with the working tree:  .device/jre.tgz  (scripts/device/make-jre.sh, here)
#                                         target/loramerge-cli.jar (mvn -DskipTests package, here)
# e.g. run(command="bash scripts/bench/bench-combine-gpu.sh", carry=[".device", "target/loramerge-cli.jar"])
#
# What it does
#   1. unpacks the runtime to /tmp/jre (when `java` is missing) and puts it on PATH;
#   2. generates the llama-7b preset (13.48 GB bf16, 3 shards) and FOUR rank-16 adapters on all 7
#      projections (seeds 1..4) on the GPU into $WORK, then `sync` (reused if already there);
#   3. warms the page cache;
#   4. times, each as a fresh process + sync (scripts/bench/bench_run.py), weights 0.4,0.3,0.2,0.1:
#        cp                 cp -r base (the copy floor; the issue's targets are multiples of it)
#        cat-cuda           loramerge merge --combine cat --device cuda           (target <= 1.15x cp)
#        ta-cuda            loramerge merge --combine task_arithmetic --device cuda (target <= 1.15x cp)
#        ties-cuda          --combine ties --density 0.5                            (target <= 1.3x cp)
#        dare-ties-cuda     --combine dare_ties --density 0.5 --seed 1               (target <= 1.3x cp)
#        mprune-cuda        --combine magnitude_prune --density 0.5                  (target <= 1.3x cp)
#        cat-cpu            --combine cat --device cpu (only for the byte comparison with cat-cuda)
#        combine-svd        loramerge combine --combine svd --rank 16                (target: well under a minute)
#        peft-combine-svd   scripts/bench/peft_combine.py svd, rank 16, on the GPU (the PEFT baseline)
#      with peak host RSS (process tree; target < 3 GB) and peak device memory (target < 6 GB);
#   5. checks cat-cuda against cat-cpu byte for byte (sha256 of every output file);
#   6. prints a short table last. Everything is logged under $OUT (default /tmp/out).
#
# The dense family (ties, dare_*, magnitude_prune) runs on kernels/combine.cu; combine's SVDs run
# on the CPU (linalg: svd from the stacked factors, the *_svd methods by the randomized SVD over
# the dense combination, which is far slower: RUN_TIES_SVD=1 adds them).
#
# Environment: OUT, WORK (default /tmp/lm-combine-$SHAPE), SHAPE (llama-7b; tiny, 1gb, 3gb to try
#   the script out), REPS (default 1), BUDGET_S (default 540), PYTHON (python3), LORAMERGE
#   (default "java $JAVA_OPTS -jar target/loramerge-cli.jar"), RANK (16), ADAPTERS (4),
#   SKIP_DENSE=1 (leave the dense family out), RUN_TIES_SVD=1 (add combine --combine ties_svd and
#   PEFT's), SKIP_PEFT=1, REGEN=1.
set -euo pipefail
export BENCH_T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SELF=$ROOT/scripts/bench/bench-combine-gpu.sh
cd "$ROOT"

REPS=${REPS:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --reps=*) REPS=${1#*=}; shift ;;
    -h|--help) sed -n '2,41p' "$SELF"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
ADAPTERS=${ADAPTERS:-4}
BUDGET_S=${BUDGET_S:-540}
SHAPE=${SHAPE:-llama-7b}
case $SHAPE in
  llama-7b) SHARDS=3 ;; 3gb|1gb|tiny) SHARDS=2 ;;
  *) echo "SHAPE must be llama-7b, 3gb, 1gb or tiny" >&2; exit 2 ;;
esac
WORK=${WORK:-/tmp/lm-combine-$SHAPE}
mkdir -p "$OUT" "$WORK"
exec 3>&2
PROGRESS=$OUT/progress.log
say() { echo "[bench-combine $(awk -v t0="$BENCH_T0" -v t="$(date +%s.%N)" 'BEGIN{printf "%5.0f", t-t0}')s] $*" | tee -a "$PROGRESS" >&3; }

# ---- Java
if ! command -v java >/dev/null 2>&1; then
  if [ -f .device/jre.tgz ]; then
    rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
    export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  else
    say "no java and no .device/jre.tgz: carry .device"; exit 1
  fi
fi
JAR=$ROOT/target/loramerge-cli.jar
if [ -z "${LORAMERGE:-}" ] && [ ! -f "$JAR" ]; then
  say "no $JAR: carry it"; exit 1
fi
LORAMERGE=${LORAMERGE:-java ${JAVA_OPTS:-} -jar $JAR}

# ---- the base and the adapters, generated on the GPU
for d in /tmp/lm-bench-*-x* /tmp/lm-combine-*; do [ -d "$d" ] && [ "$d" != "$WORK" ] && rm -rf "$d"; done
rm -rf "$WORK"/out-*
STAMP="$SHAPE shards=$SHARDS rank=$RANK adapters=$ADAPTERS"
if [ -n "${REGEN:-}" ] || [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$STAMP" ]; then
  say "generating $STAMP into $WORK"
  rm -f "$WORK/.stamp"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK" --shape "$SHAPE" --shards "$SHARDS" --rank "$RANK" --seed 0 \
    --gen-device auto --base-only --force >"$OUT/make_synthetic.log" 2>&1 || { cat "$OUT/make_synthetic.log" >&3; exit 1; }
  for i in $(seq 1 "$ADAPTERS"); do
    "$PY" scripts/bench/make_synthetic.py --out "$WORK/a$i" --shape "$SHAPE" --shards "$SHARDS" --rank "$RANK" --seed "$i" \
      --gen-device auto --adapter-only --force >>"$OUT/make_synthetic.log" 2>&1 || { cat "$OUT/make_synthetic.log" >&3; exit 1; }
  done
  sync
  echo "$STAMP" >"$WORK/.stamp"
  say "generated and synced"
else
  say "reusing $WORK ($STAMP)"
fi
ADAPTER_ARGS=""
PEFT_ADAPTERS=""
WEIGHTS=""
for i in $(seq 1 "$ADAPTERS"); do
  ADAPTER_ARGS="$ADAPTER_ARGS --adapter $WORK/a$i/adapter"
  PEFT_ADAPTERS="$PEFT_ADAPTERS --adapter $WORK/a$i/adapter"
  WEIGHTS="$WEIGHTS${WEIGHTS:+,}$(awk -v i="$i" -v n="$ADAPTERS" 'BEGIN{printf "%.2f", (n - i + 1) / (n * (n + 1) / 2)}')"
done

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  nproc: $(nproc)"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd';')"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "model: $SHAPE, $(du -sb "$WORK/base" | cut -f1 | awk '{printf "%.2f GB", $1/1e9}') in $SHARDS shards; $ADAPTERS adapters r=$RANK; weights $WEIGHTS; reps=$REPS"
} >"$OUT/machine.txt" 2>&1

say "warming page cache"
ls "$WORK"/base/* "$WORK"/a*/adapter/* | xargs -P 8 -n 1 sh -c 'cat "$0" >/dev/null'
cat "$JAR" >/dev/null 2>&1 || true

MERGE="merge --base {base} $ADAPTER_ARGS --weights $WEIGHTS --out {out}"
TOOLS=(--tool "cp=cp -r {base} {out}")
TOOLS+=(--tool "cat-cuda=$LORAMERGE $MERGE --combine cat --device cuda")
TOOLS+=(--tool "ta-cuda=$LORAMERGE $MERGE --combine task_arithmetic --device cuda")
if [ -z "${SKIP_DENSE:-}" ]; then
  TOOLS+=(--tool "ties-cuda=$LORAMERGE $MERGE --combine ties --density 0.5 --device cuda")
  TOOLS+=(--tool "dare-ties-cuda=$LORAMERGE $MERGE --combine dare_ties --density 0.5 --seed 1 --device cuda")
  TOOLS+=(--tool "mprune-cuda=$LORAMERGE $MERGE --combine magnitude_prune --density 0.5 --device cuda")
fi
TOOLS+=(--tool "cat-cpu=$LORAMERGE $MERGE --combine cat --device cpu")
TOOLS+=(--tool "combine-svd=$LORAMERGE combine --base {base} $ADAPTER_ARGS --weights $WEIGHTS --combine svd --rank $RANK --out {out}")
# loramerge's rows before PEFT's, so that a call that runs out of time still has them
[ -n "${RUN_TIES_SVD:-}" ] && TOOLS+=(--tool "combine-ties-svd=$LORAMERGE combine --base {base} $ADAPTER_ARGS --weights $WEIGHTS --combine ties_svd --density 0.5 --rank $RANK --out {out}")
[ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-combine-svd=$PY scripts/bench/peft_combine.py --base {base} $PEFT_ADAPTERS --weights $WEIGHTS --combination-type svd --svd-rank $RANK --device cuda --out {out}")
[ -n "${RUN_TIES_SVD:-}" ] && [ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-combine-ties-svd=$PY scripts/bench/peft_combine.py --base {base} $PEFT_ADAPTERS --weights $WEIGHTS --combination-type ties_svd --density 0.5 --svd-rank $RANK --device cuda --out {out}")

set +e
"$PY" scripts/bench/bench_run.py --base "$WORK/base" --adapter "$WORK/a1/adapter" --work "$WORK" --logs "$OUT" \
  --reps "$REPS" --gpu --budget-s "$BUDGET_S" --python "$PY" --baseline cp --floor cp \
  --verify-bytes cat-cuda,cat-cpu "${TOOLS[@]}" >"$OUT/table.out" 2>&3
rc=$?
set -e
rm -rf "$WORK"/out-*
say "done (rc $rc)"
{
  echo
  echo "## loramerge: $ADAPTERS adapters in one pass, GPU machine, $SHAPE"
  sed 's/^/    /' "$OUT/machine.txt"
  echo
  cat "$OUT/table.out"
  echo
  echo "wall = fresh process + sync, page cache warm; peak GPU = nvidia-smi used minus idle; logs: $OUT"
} | tee "$OUT/summary.md"
exit $rc
