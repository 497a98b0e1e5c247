#!/usr/bin/env bash
# Every quantized base besides NF4, end to end on the GPU machine, beside the copy floors, in one
# device call (`gpu-run.sh device quant`, carry .device; issue 12's last goals: each --to bf16
# <= 1.1x the copy of the 16-bit output, FP8 -> FP8 and int8 -> int8 <= 1.3x the copy of their base).
#
#   bash scripts/bench/bench-quant-gpu.sh
#
# Makes a Llama-2-7B-shaped bf16 base (13.48 GB, 3 shards) and a rank-16 adapter on all 7
# projections on the device (make_synthetic.py), then for each format in FORMATS, in this order
# (the rows issue 12 sets goals for first), its base, the fastest way faithful to the format
# (round to nearest, no calibration):
#   fp8-tensor   transformers' FP8 with one scale a weight
#   int8         bitsandbytes LLM.int8, int8 + per-row SCB (make_quantized.py, on the device)
#   fp8          transformers' fine-grained FP8, 128x128 blocks (make_quantized.py, on the device)
#   awq          AWQ 4-bit GEMM, group 128 (make_quantized.py, on the device)
#   gptq         GPTQ 4-bit, group 128, symmetric, v1 (make_quantized.py, on the device)
#   fp4          bitsandbytes FP4 with double quantization (`loramerge quantize --quant-type fp4`)
#   fp8-channel  compressed-tensors' per-channel FP8 (--to bf16 only: --to fp8 refuses its scales)
# and times, each a fresh ./loramerge (the launcher: -Xmx2g and the class-data archive of .device/loramerge.jar) + sync, page cache warm:
# `cp -r` + sync of the base (its copy floor), `merge --to bf16` (floor: the bf16 base's copy, the
# 16-bit output) and the requantizing merges: --to int8, --to nf4 and --to fp8 (gptq, awq), --to fp8
# (fp8, fp8-tensor), --to fp4; floor: the copy of their base. Each base and output is deleted when its
# rows are done (disk: the bf16 base, one quantized base and one output, about 35 GB at most).
#
# Time on an H200 with 16 cores (2026-12-01, every format in one call: 316 s): the bf16 base and
# adapter ~40 s and their copy 12-14 s; per format its base 9-14 s on the device (FP4: `quantize`,
# 42 s), its copy 3-6 s, `--to bf16` 6-8 s, each requantizing merge 3-7 s (all on the GPU). FP8 per
# tensor holds each weight whole on the device while it requantizes (13 bytes an element: 4.8 GiB
# of device memory at most on the 7B shape); a weight that finds no room there goes to the CPU
# codec; a row that fails shows it in the exit column. A format starts only if its base, copy and
# --to bf16 fit in BUDGET_S seconds (default 560) from the start, a requantizing merge only if 60 s are left, and every command is stopped at
# BUDGET_S (exit 124: its wall time is then a lower bound), so the table comes back within one
# 10-minute device call; it is written row by row.
#
# Writes $OUT/quant-table.md (the table, with the card and date) and $OUT/quant.log (each command's
# log and measure.py line, appended as it ends). Needs .device/jre.tgz and .device/loramerge.jar (gpu-run.sh pack).
# Environment: OUT (default /tmp/out), WORK (/tmp/lm-quant), PYTHON (python3), RANK (16),
#   FORMATS (fp8-tensor int8 fp8 awq gptq fp4 fp8-channel), BUDGET_S (560);
#   SHAPE, DEVICE, GEN_DEVICE (llama-7b, cuda, cuda) and GEN_ARGS (more make_synthetic.py options,
#   e.g. SHAPE=custom GEN_ARGS="--hidden 256 --intermediate 512") only to try the script out elsewhere.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
case "${1:-}" in -h|--help) sed -n '2,47p' "$0"; exit 0 ;; esac
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/lm-quant}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
SHAPE=${SHAPE:-llama-7b}
DEVICE=${DEVICE:-cuda}
GEN_DEVICE=${GEN_DEVICE:-cuda}
FORMATS=${FORMATS:-fp8-tensor int8 fp8 awq gptq fp4 fp8-channel}
BUDGET_S=${BUDGET_S:-560}
mkdir -p "$OUT" "$WORK"
LOGS=$(mktemp -d)           # each command's log, appended to $OUT/quant.log when it is done
trap 'rm -rf "$LOGS"' EXIT
: > "$OUT/quant.log"
# keep LOG: appends a command's log to $OUT/quant.log under its name (one file: the device brings back few)
keep() { { echo "===== $(basename "$1" .log)"; cat "$1"; echo; } >> "$OUT/quant.log"; }
if ! command -v java >/dev/null 2>&1; then
  rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
fi
# every run as users start it: the ./loramerge launcher (-Xmx2g) with the jar's class-data archive
bash "$ROOT/scripts/install/make-cds.sh" "$ROOT/.device/loramerge.jar" >&2
LM="env LORAMERGE_JAR=$ROOT/.device/loramerge.jar $ROOT/loramerge"
TABLE=$OUT/quant-table.md
printf '| case | wall s | x floor | goal | peak RSS GB | peak GPU GiB | exit | survival |\n|---|---|---|---|---|---|---|---|\n' > "$TABLE"
T0=$SECONDS
say() { echo "[quant $((SECONDS - T0))s] $*" >&2; }
# fits SECONDS: whether a step of about that long ends within the budget
fits() { [ $((SECONDS - T0 + $1)) -le "$BUDGET_S" ]; }
# left: the seconds left of the budget (at least 1), the hard limit of the next command (exit 124 when it hits it)
left() { local l=$((BUDGET_S - SECONDS + T0)); echo $((l > 0 ? l : 1)); }
skip() { echo "| $1 | skipped: past the ${BUDGET_S} s budget | | | | | | |" >> "$TABLE"; say "skipped: $1"; }

# run LABEL FLOOR GOAL CMD...: one timed run (a fresh process + sync); its row goes to the table
run() {
  local label=$1 floor=$2 goal=$3; shift 3
  local log=$LOGS/${label//[^A-Za-z0-9_.-]/_}.log
  local line
  line=$("$PY" scripts/bench/measure.py --label "$label" --gpu --log "$log" -- timeout -k 10 "$(left)" "$@")
  echo "$line" >> "$log"
  keep "$log"
  "$PY" - "$line" "$log" "$floor" "$label" "$goal" >> "$TABLE" <<'PYEOF'
import json, sys
m = json.loads(sys.argv[1]); log = open(sys.argv[2]).read(); floor = float(sys.argv[3]); label, goal = sys.argv[4], sys.argv[5]
survival = "-"
start = log.find("{\n")
if start >= 0:
    try:
        r = json.loads(log[start:log.index("\n}", start) + 2]).get("requantization") or {}
        if "survival" in r:
            survival = f"{r['survival']:.3f}"
    except ValueError:
        pass
ratio = f"{m['wall_s'] / floor:.2f}" if floor > 0 else "-"
gpu = m.get("peak_gpu_mem_delta_mb")
print(f"| {label} | {m['wall_s']:.2f} | {ratio} | {goal} | {m['peak_rss_tree_mb'] / 1000:.2f} | "
      f"{'-' if gpu is None else f'{gpu / 1024:.2f}'} | {m['rc']} | {survival} |")
PYEOF
  tail -n 1 "$TABLE" >&2
}
# floor LABEL SRC: cp -r + sync of SRC, timed, its row in the table; sets FLOOR to the seconds
floor() {
  rm -rf "$WORK/copy"
  local line
  line=$("$PY" scripts/bench/measure.py --label cp -- cp -r "$2" "$WORK/copy")
  rm -rf "$WORK/copy"
  FLOOR=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' "$line")
  echo "| $1 ($(du -sh "$2" | cut -f1)) | $FLOOR | 1.00 | | | | | |" >> "$TABLE"
  say "$1: $FLOOR s"
}
merge() { # LABEL FLOOR GOAL BASE --to X: a merge into WORK/out, removed after
  local label=$1 fl=$2 goal=$3 base=$4; shift 4
  rm -rf "$WORK/out"
  run "$label" "$fl" "$goal" $LM merge --base "$base" --adapter "$WORK/m/adapter" --out "$WORK/out" --device "$DEVICE" --quiet --json "$@"
  rm -rf "$WORK/out"
}
warm() { find "$@" -type f -print0 | xargs -0 -P 8 -n 1 sh -c 'cat "$0" > /dev/null'; }
# make FORMAT: its base in WORK/q, timed (a row without a floor)
make_base() {
  local fmt=$1 s=$SECONDS rc=0
  rm -rf "$WORK/q"
  if [ "$fmt" = fp4 ]; then
    timeout -k 10 "$(left)" $LM quantize --base "$WORK/m/base" --out "$WORK/q" --quant-type fp4 --double-quant --quiet \
      > "$LOGS/make-$fmt.log" 2>&1 || rc=$?
  else
    timeout -k 10 "$(left)" "$PY" scripts/bench/make_quantized.py --base "$WORK/m/base" --out "$WORK/q" --format "$fmt" --device "$GEN_DEVICE" \
      > "$LOGS/make-$fmt.log" 2>&1 || rc=$?
  fi
  sync
  keep "$LOGS/make-$fmt.log"
  echo "| make the $fmt base ($([ "$fmt" = fp4 ] && echo "loramerge quantize" || echo "make_quantized.py on $GEN_DEVICE")) | $((SECONDS - s)) | | | | | $rc | |" >> "$TABLE"
  [ "$rc" = 0 ] || { tail -n 5 "$LOGS/make-$fmt.log" >&2; return 1; }
  warm "$WORK/q"
}

rm -rf "${WORK:?}"/*
say "generating the bf16 base and a rank-$RANK adapter"
# shellcheck disable=SC2086  # GEN_ARGS: several options
"$PY" scripts/bench/make_synthetic.py --out "$WORK/m" --shape "$SHAPE" --rank "$RANK" --gen-device "$GEN_DEVICE" --force ${GEN_ARGS:-} \
  > "$LOGS/gen.log" 2>&1 || { keep "$LOGS/gen.log"; tail -5 "$LOGS/gen.log" >&2; exit 1; }
keep "$LOGS/gen.log"
sync; warm "$WORK/m"
floor "cp -r + sync, bf16 base (floor of every --to bf16)" "$WORK/m/base"
F=$FLOOR
for fmt in $FORMATS; do
  case "$fmt" in
  fp8|fp8-tensor) to=fp8 ;;
  int8) to=int8 ;;
  fp4) to=fp4 ;;
  gptq|awq) to="nf4 fp8" ;;
  fp8-channel) to= ;;
  *) echo "unknown format $fmt (fp8 int8 gptq awq fp4 fp8-channel fp8-tensor)" >&2; exit 2 ;;
  esac
  # the base, its copy and --to bf16 (~45 s); the requantizing merge has its own check
  if ! fits 45; then
    skip "$fmt base: every row"
    continue
  fi
  say "making the $fmt base"
  make_base "$fmt" || continue
  floor "cp -r + sync, $fmt base (floor of --to ${to:-bf16 only})" "$WORK/q"
  Q=$FLOOR
  merge "$fmt --to bf16 (floor: bf16 copy)" "$F" "<= 1.1" "$WORK/q" --to bf16
  for t in $to; do
    goal=$([ "$t" = "$fmt" ] || { [ "$t" = fp8 ] && [ "$fmt" = fp8-tensor ]; } && [ "$t" != fp4 ] && echo "<= 1.3" || echo "")
    if fits 60; then
      merge "$fmt --to $t (floor: $fmt copy)" "$Q" "$goal" "$WORK/q" --to "$t"
    else
      skip "$fmt --to $t"
    fi
  done
  rm -rf "$WORK/q"
done
rm -rf "${WORK:?}"/*
{
  echo
  card=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
  echo "${card:-no GPU}, $(date -u +%Y-%m-%d), $(nproc) cores, SHAPE $SHAPE, rank $RANK, $((SECONDS - T0)) s in all"
} >> "$TABLE"
cat "$TABLE"
