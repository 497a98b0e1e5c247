#!/usr/bin/env bash
# CPU benchmark on this machine: copy floor vs the PEFT CPU recipe vs `loramerge merge --device cpu`.
#
#   scripts/bench/bench-cpu.sh [SIZE]          SIZE = tiny | 1gb (default) | 3gb | llama-7b
#
# Environment knobs (all optional):
#   REPS=3            repetitions of each tool (order rotates every repetition)
#   WORK=/tmp/loramerge-bench-$SIZE   synthetic checkpoint (reused when present) + outputs
#   LOGS=$WORK/logs-<date>            per-run logs, results.jsonl, table.md
#   PYTHON=python3    a Python with torch, transformers, peft and safetensors
#                     (the versions in scripts/fixtures/requirements-fixtures.txt)
#   LORAMERGE="java -jar target/loramerge-cli.jar"   how to start loramerge (e.g. LORAMERGE=./loramerge)
#   JAVA_OPTS=...     extra JVM options for the default LORAMERGE
#   RANK=16 SEED=0    adapter rank, seed of the synthetic data
#   SKIP_CP=1 SKIP_PEFT=1 SKIP_LM=1   leave a tool out;  SKIP_VERIFY=1  no PEFT-vs-loramerge check
#   REGEN=1           regenerate the synthetic checkpoint
set -euo pipefail
export BENCH_T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
case ${1:-} in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
  -*) echo "bench-cpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
SIZE=${1:-${SIZE:-1gb}}
case $SIZE in
  tiny|1gb|3gb|llama-7b) ;;
  *) echo "bench-cpu.sh: SIZE must be tiny, 1gb, 3gb or llama-7b, not '$SIZE' (see --help)" >&2; exit 2 ;;
esac
REPS=${REPS:-3}
RANK=${RANK:-16}
SEED=${SEED:-0}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/loramerge-bench-$SIZE}
LOGS=${LOGS:-$WORK/logs-$(date +%Y%m%d-%H%M%S)}
JAR=$ROOT/target/loramerge-cli.jar
mkdir -p "$WORK" "$LOGS"
say() { echo "[bench-cpu] $*" | tee -a "$LOGS/progress.log" >&2; }

# ---- loramerge jar
if [ -z "${SKIP_LM:-}" ] && [ -z "${LORAMERGE:-}" ] && [ ! -f "$JAR" ]; then
  say "building $JAR (mvn -q -DskipTests package)"
  if ! mvn -q -DskipTests package >"$LOGS/mvn.log" 2>&1 || [ ! -f "$JAR" ]; then
    say "build failed (see $LOGS/mvn.log): loramerge left out"
    SKIP_LM=1
  fi
fi
LORAMERGE=${LORAMERGE:-java ${JAVA_OPTS:-} -jar $JAR}

# ---- synthetic checkpoint (reused when it matches)
STAMP="shape=$SIZE rank=$RANK seed=$SEED"
if [ -n "${REGEN:-}" ] || [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$STAMP" ]; then
  say "generating $SIZE into $WORK"
  rm -f "$WORK/.stamp"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK" --shape "$SIZE" --rank "$RANK" --seed "$SEED" --force \
    2>&1 | tee "$LOGS/make_synthetic.log" >&2
  sync
  echo "$STAMP" >"$WORK/.stamp"
else
  say "reusing $WORK ($STAMP)"
fi
rm -rf "$WORK"/out-*

# ---- machine info
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)  nproc: $(nproc)  cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "memory: $(free -g | awk '/^Mem:/{print $2" GiB total, "$7" GiB available"}')  disk free in $WORK: $(df -h --output=avail "$WORK" | tail -1 | tr -d ' ')"
  echo "kernel: $(uname -r)"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "python: $("$PY" -c 'import sys,torch,transformers,peft,safetensors;print(sys.version.split()[0],"torch",torch.__version__,"transformers",transformers.__version__,"peft",peft.__version__,"safetensors",safetensors.__version__,"threads",torch.get_num_threads())' 2>/dev/null)"
  echo "model: $SIZE, $(du -sb "$WORK/base" | cut -f1 | awk '{printf "%.2f GB", $1/1e9}') in $(ls "$WORK"/base/*.safetensors | wc -l) file(s); adapter r=$RANK; reps=$REPS"
  echo "loramerge: ${SKIP_LM:+(skipped) }$LORAMERGE"
} >"$LOGS/machine.txt"
cat "$LOGS/machine.txt" >&2

# ---- warm the page cache
say "warming page cache"
cat "$WORK"/base/* "$WORK"/adapter/* >/dev/null
[ -f "$JAR" ] && cat "$JAR" >/dev/null

# ---- timed runs
TOOLS=()
[ -z "${SKIP_CP:-}" ] && TOOLS+=(--tool "cp=cp -r {base} {out}")
[ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-cpu=$PY scripts/bench/peft_merge.py --base {base} --adapter {adapter} --out {out} --device cpu")
[ -z "${SKIP_LM:-}" ] && TOOLS+=(--tool "loramerge-cpu=$LORAMERGE merge --base {base} --adapter {adapter} --out {out} --device cpu")
if [ ${#TOOLS[@]} -eq 0 ]; then say "nothing to run"; exit 1; fi
VERIFY=()
[ -z "${SKIP_VERIFY:-}" ] && VERIFY=(--verify-numeric peft-cpu,loramerge-cpu)
export COMPARE_MAX_ULP=${COMPARE_MAX_ULP:-1000000}

set +e
"$PY" scripts/bench/bench_run.py --base "$WORK/base" --adapter "$WORK/adapter" --work "$WORK" --logs "$LOGS" \
  --reps "$REPS" --python "$PY" --baseline peft-cpu --floor cp "${VERIFY[@]}" "${TOOLS[@]}" >"$LOGS/table.out"
rc=$?
set -e
echo
echo "## loramerge CPU benchmark ($SIZE)"
echo
sed 's/^/    /' "$LOGS/machine.txt"
echo
cat "$LOGS/table.out"
echo
echo "wall = fresh process + sync, page cache warm; ratios are medians; logs: $LOGS"
if [ -z "${SKIP_LM:-}" ] && [ -z "${SKIP_VERIFY:-}" ]; then
  # exactness of loramerge's own output: every sampled element must be the correctly rounded exact merge
  rm -rf "$WORK/out-verify"
  $LORAMERGE merge --base "$WORK/base" --adapter "$WORK/adapter" --out "$WORK/out-verify" --device cpu --quiet
  $LORAMERGE verify --base "$WORK/base" --adapter "$WORK/adapter" --merged "$WORK/out-verify" --max-ulp 0 || rc=1
  echo "PEFT's output, for comparison (it may round twice):"
  $LORAMERGE verify --base "$WORK/base" --adapter "$WORK/adapter" --merged "$WORK/out-peft-cpu" --max-ulp 1000000 2>&1 | head -3 || true
  rm -rf "$WORK/out-verify"
fi
exit $rc
