#!/usr/bin/env bash
# The extract benchmark for the GPU machine, in one device call (no network there).
#
#   bash scripts/bench/bench-extract-gpu.sh [--reps N]
#
# Needs, carried with the working tree:  .device/jre.tgz  (scripts/device/make-jre.sh, here)
#                                         target/loramerge-cli.jar (mvn -DskipTests package, here; the runnable jar)
# e.g. run(command="bash scripts/bench/bench-extract-gpu.sh", carry=[".device", "target/loramerge-cli.jar"])
#
# The shortest call that measures extract on the 7B shape, GPU engine only (the two checkpoints made, the cache
# warmed, cat once, extract once; no anchors, no CPU engine, no unmerge):
#   run(command="SKIP_ANCHORS=1 bash scripts/bench/bench-extract-gpu.sh", carry=[".device", "target/loramerge-cli.jar"])
# (EXTRACT_CPU, CPU_TARGET and RUN_UNMERGE are off by default on llama-7b; SVDS_SWEEP is "3 6" and UNMERGE_PAIR on.) progress.log says how long
# each step took; the summary's timing line gives extract's own split, decomposeSvd being the SVDs' part of decompose.
#
# What it does
#   1. unpacks the runtime to /tmp/jre (when `java` is missing);
#   2. generates the llama-7b base (13.48 GB bf16, 3 shards: scripts/bench/make_synthetic.py --base-only) and
#      the "fine-tuned" model: every projection + a known rank-RANK delta (σ_i = 0.8·0.97^i) + full-rank
#      noise N(0, 1e-4²), rounded to bf16 (scripts/bench/make_tuned.py), on the GPU; reused when present;
#   3. warms the page cache (cat > /dev/null);
#   4. times, as fresh processes with the cache warm, REPS times each:
#        cat             cat of both checkpoints' shards to /dev/null (the floor: reading both)
#        extract-cuda    loramerge extract --rank RANK --device cuda (ΔW formed on several threads and kept in device
#                        memory, the SVD's products and QRs there, several weights decomposed at once while the next
#                        are formed); its row says which stage bounded it (extract --json's timing) beside the wall time
#        extract-cpu     the same with --device cpu (all cores), only where EXTRACT_CPU=1: on the 7B shape the CPU
#                        engine takes longer than the 10-minute device call (its row says "skipped")
#      with peak host RSS (process tree) and peak device memory (measure.py);
#   5. runs scripts/bench/extract_anchors.py on the layers ANCHOR_LAYERS (default 0,15,31; "all" for every
#      module): torch.linalg.svd per module on the GPU (mergekit's method) and torch.svd_lowrank, each timed,
#      and the error ratio to the Eckart–Young optimum of each, loramerge's adapter (extract-cuda's) included;
#   6. prints a table. Everything is logged under $OUT (default /tmp/out).
#
# The ratio extract-cuda / cat is what the issue's 1.5x target is measured by (host RSS < 3 GB, device memory
# < 8 GB: the table's peak columns).
#
# Environment: OUT, WORK (default /tmp/lm-extract-$SHAPE), SHAPE (llama-7b; tiny, 1gb, 3gb to try it out),
#   REPS (default 1), RANK (64), SEED (0), PYTHON (python3), LORAMERGE (default "java $JAVA_OPTS -jar
#   target/loramerge-cli.jar", JAVA_OPTS default -Xmx2g as ./loramerge), LM_ARGS (extract options; default --dtype f32,
#   so that the error ratio is the SVD's and not bf16's rounding of the factors), ANCHOR_LAYERS (0,15,31), SKIP_ANCHORS=1, REGEN=1,
#   EXTRACT_CPU=1 (also time the CPU engine; default only for the tiny, 1gb and 3gb shapes),
#   CPU_TARGET (e.g. q_proj: extract --target it --others report on both engines, the CPU engine's row where the whole
#   model would not fit a device call), SVDS_SWEEP (default "3 6"; "" for none: extract-cuda again with -Dloramerge.svds=N, the
#   weights decomposed at once, one row each, beside the default 4; about 7 s a row on the 7B shape), RUN_UNMERGE=1 (then, the tuned model removed: a rank-16 adapter merged into the
#   base and unmerged with --base, beside cp -r + sync of the base; the unmerged model's distance to the base in ulps;
#   REPS times, interleaved), UNMERGE_PAIR (default 1; 0 skips it: in each rep after extract-cuda, cp -r + sync of the
#   tuned model and `unmerge --merged tuned --adapter <the extracted adapter> --base base`, the distance report on every
#   core, each with its sync; about 30 s a rep on the 7B shape by the RESULTS.md times).
# Every row of the tables is the median of its REPS runs; cat and extract (and cp and unmerge) alternate within a rep so
# that drift cancels.
set -euo pipefail
T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

REPS=${REPS:-1}
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift 2 ;;
    --reps=*) REPS=${1#*=}; shift ;;
    -h|--help) sed -n '2,51p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
RANK=${RANK:-64}
SEED=${SEED:-0}
SHAPE=${SHAPE:-llama-7b}
case $SHAPE in
  llama-7b) SHARDS=3; EXTRACT_CPU=${EXTRACT_CPU:-} ;; 3gb|1gb|tiny) SHARDS=2; EXTRACT_CPU=${EXTRACT_CPU:-1} ;;
  *) echo "SHAPE must be llama-7b, 3gb, 1gb or tiny" >&2; exit 2 ;;
esac
WORK=${WORK:-/tmp/lm-extract-$SHAPE}
ANCHOR_LAYERS=${ANCHOR_LAYERS:-0,15,31}
mkdir -p "$OUT" "$WORK"
say() { echo "[bench-extract $(awk -v t0="$T0" -v t="$(date +%s.%N)" 'BEGIN{printf "%5.0f", t-t0}')s] $*" | tee -a "$OUT/progress.log" >&2; }

# ---- Java
if ! command -v java >/dev/null 2>&1; then
  if [ -f .device/jre.tgz ]; then
    rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
    export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
  else
    say "no java and no .device/jre.tgz: carry .device (scripts/device/make-jre.sh)"; exit 1
  fi
fi
JAR=$ROOT/target/loramerge-cli.jar
if [ -z "${LORAMERGE:-}" ] && [ ! -f "$JAR" ]; then
  say "no $JAR: carry it (mvn -q package -DskipTests)"; exit 1
fi
LORAMERGE=${LORAMERGE:-java ${JAVA_OPTS:--Xmx2g} -jar $JAR}   # the launcher's heap cap

# ---- the two checkpoints
for d in /tmp/lm-extract-*; do [ -d "$d" ] && [ "$d" != "$WORK" ] && rm -rf "$d"; done
rm -rf "$WORK"/out-*
STAMP="$SHAPE shards=$SHARDS rank=$RANK seed=$SEED"
if [ -n "${REGEN:-}" ] || [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$STAMP" ]; then
  rm -f "$WORK/.stamp"
  say "generating the base ($SHAPE)"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK" --shape "$SHAPE" --shards "$SHARDS" --seed "$SEED" --base-only \
    --gen-device auto --force >"$OUT/make_synthetic.log" 2>&1 || { cat "$OUT/make_synthetic.log" >&2; exit 1; }
  say "making the tuned model: rank-$RANK delta + noise"
  "$PY" scripts/bench/make_tuned.py --base "$WORK/base" --out "$WORK/tuned" --rank "$RANK" --seed "$SEED" --force \
    >"$OUT/make_tuned.log" 2>&1 || { cat "$OUT/make_tuned.log" >&2; exit 1; }
  sync
  echo "$STAMP" >"$WORK/.stamp"
else
  say "reusing $WORK ($STAMP)"
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  nproc: $(nproc)"
  echo "cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "memory: $(free -g | awk '/^Mem:/{print $2" GiB total, "$7" GiB available"}')"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd';')"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "python: $("$PY" -c 'import sys,torch;print(sys.version.split()[0],"torch",torch.__version__)' 2>/dev/null)"
  echo "models: $(du -sb "$WORK/base" | cut -f1 | awk '{printf "%.2f GB", $1/1e9}') base + the same tuned; delta rank $RANK"
} >"$OUT/machine.txt" 2>&1

say "warming the page cache"
cat "$WORK"/base/*.safetensors "$WORK"/tuned/*.safetensors >/dev/null
[ -f "$JAR" ] && cat "$JAR" >/dev/null

GPU_FLAG=
command -v nvidia-smi >/dev/null 2>&1 && GPU_FLAG=--gpu
run() {  # label, command...
  local label=$1; shift
  "$PY" scripts/bench/measure.py --label "$label" $GPU_FLAG --no-sync --log "$OUT/$label.log" --json-out "$OUT/runs.jsonl" -- "$@" >/dev/null
}
urun() {  # label, command... (with the sync after it, as a user waits for it)
  local label=$1; shift
  "$PY" scripts/bench/measure.py --label "$label" $GPU_FLAG --log "$OUT/$label.log" --json-out "$OUT/runs.jsonl" -- "$@" >/dev/null
}
: >"$OUT/runs.jsonl"
for rep in $(seq 1 "$REPS"); do
  say "rep $rep: cat"
  run cat sh -c "cat '$WORK'/base/*.safetensors '$WORK'/tuned/*.safetensors >/dev/null"
  say "rep $rep: extract on the GPU engine"
  rm -rf "$WORK/out-extract"
  run extract-cuda $LORAMERGE extract --base "$WORK/base" --tuned "$WORK/tuned" --out "$WORK/out-extract" --rank "$RANK" --device cuda \
    --json --quiet ${LM_ARGS:---dtype f32}
  for n in ${SVDS_SWEEP-3 6}; do
    say "rep $rep: extract on the GPU engine, $n SVDs at once"
    rm -rf "$WORK/out-extract-svds"
    # the knob reaches whichever java LORAMERGE runs (gpu-run.sh sets LORAMERGE to its own jar)
    export JAVA_TOOL_OPTIONS="-Dloramerge.svds=$n"
    run "extract-cuda-svds$n" $LORAMERGE extract --base "$WORK/base" --tuned "$WORK/tuned" --out "$WORK/out-extract-svds" --rank "$RANK" \
      --device cuda --json --quiet ${LM_ARGS:---dtype f32}
    unset JAVA_TOOL_OPTIONS
  done
  rm -rf "$WORK/out-extract-svds"
  if [ "${UNMERGE_PAIR:-1}" != 0 ]; then
    # unmerge on the same pair: the adapter just extracted taken out of the tuned model, --base measuring the distance
    # (the report that reads three checkpoints, on every core), beside its floor cp -r + sync of the tuned model
    say "rep $rep: cp -r + sync of the tuned model; unmerge --merged tuned --adapter (extracted) --base base"
    rm -rf "$WORK/copy" "$WORK/out-unmerge"
    urun cp-tuned cp -r "$WORK/tuned" "$WORK/copy"
    rm -rf "$WORK/copy"
    urun unmerge-pair $LORAMERGE unmerge --merged "$WORK/tuned" --adapter "$WORK/out-extract" --base "$WORK/base" \
      --out "$WORK/out-unmerge" --device cuda --json --quiet
    rm -rf "$WORK/out-unmerge"
  fi
  if [ -n "$EXTRACT_CPU" ]; then
    say "rep $rep: extract on the CPU engine"
    rm -rf "$WORK/out-extract-cpu"
    run extract-cpu $LORAMERGE extract --base "$WORK/base" --tuned "$WORK/tuned" --out "$WORK/out-extract-cpu" --rank "$RANK" --device cpu \
      --json --quiet ${LM_ARGS:---dtype f32}
  fi
done

if [ -n "${CPU_TARGET:-}" ]; then
  # the CPU engine beside the GPU engine on a subset of the modules (the whole 7B on the CPU exceeds a device call)
  for dev in cuda cpu; do
    say "extract --target $CPU_TARGET on the $dev engine"
    rm -rf "$WORK/out-extract-sub"
    run "extract-$dev-$CPU_TARGET" $LORAMERGE extract --base "$WORK/base" --tuned "$WORK/tuned" --out "$WORK/out-extract-sub" --rank "$RANK" \
      --device "$dev" --target "$CPU_TARGET" --others report --json --quiet ${LM_ARGS:---dtype f32}
  done
  rm -rf "$WORK/out-extract-sub"
fi

if [ -z "${SKIP_ANCHORS:-}" ]; then
  say "anchors on layers $ANCHOR_LAYERS: torch.linalg.svd and torch.svd_lowrank per module, and the error ratios"
  "$PY" scripts/bench/extract_anchors.py --base "$WORK/base" --tuned "$WORK/tuned" --rank "$RANK" --adapter "$WORK/out-extract" \
    --layers "$ANCHOR_LAYERS" --json-out "$OUT/anchors.json" >"$OUT/anchors.log" 2>&1 || { tail -20 "$OUT/anchors.log" >&2; exit 1; }
fi

if [ -n "${RUN_UNMERGE:-}" ]; then
  # unmerge at the single merge's speed: a rank-16 adapter merged into the base, then taken back out (--base
  # measures the distance to the original), beside cp -r + sync of the base; the tuned model makes room first
  rm -rf "$WORK/tuned" "$WORK/.stamp"
  say "unmerge: a rank-16 adapter, merged and taken back out"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK/u" --shape "$SHAPE" --shards "$SHARDS" --rank 16 --seed 1 --adapter-only \
    --gen-device auto --force >>"$OUT/make_synthetic.log" 2>&1 || { tail -20 "$OUT/make_synthetic.log" >&2; exit 1; }
  sync
  cat "$WORK"/base/*.safetensors >/dev/null
  for rep in $(seq 1 "$REPS"); do  # interleaved, so that drift cancels in the medians
    urun cp-base cp -r "$WORK/base" "$WORK/u/copy"
    rm -rf "$WORK/u/copy" "$WORK/u/merged" "$WORK/u/unmerged"
    urun merge-cuda $LORAMERGE merge --base "$WORK/base" --adapter "$WORK/u/adapter" --out "$WORK/u/merged" --device cuda --quiet
    urun unmerge-cuda $LORAMERGE unmerge --merged "$WORK/u/merged" --adapter "$WORK/u/adapter" --base "$WORK/base" --out "$WORK/u/unmerged" \
      --device cuda --json --quiet
  done
  rm -rf "$WORK/u"
fi

"$PY" - "$OUT" "$EXTRACT_CPU" <<'EOF' | tee "$OUT/summary.md"
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
extract_cpu = sys.argv[2]
runs = [json.loads(l) for l in (out / "runs.jsonl").read_text().splitlines() if l.strip()]
by = {}
for r in runs:
    by.setdefault(r["label"], []).append(r)
print("## loramerge extract, GPU machine")
print("    " + (out / "machine.txt").read_text().replace("\n", "\n    "))
def report(label):
    """extract's --json report from its log (the last run of that label), or None."""
    try:
        text = (out / f"{label}.log").read_text()
        return json.loads(text[text.index("{"):text.rindex("}") + 1])
    except (OSError, ValueError):
        return None
def bound(rep):
    """The stage that bounded the run and the overlapped stages' seconds, from extract's timing."""
    t = rep.get("timing") if rep else None
    if not t or "bound" not in t:
        return "-"
    return (f"{t['bound']} ({t['formDelta']:.2f} / {t['decompose']:.2f} x{t['decomposeThreads']} / "
            f"{t['waitForDelta']:.2f} / {t['waitForRoom']:.2f})")
print("| run | wall s (median) | x cat | peak RSS GB | peak GPU MiB (delta) | SVDs on | relative error "
      "| bound by (form / SVD x threads / SVD waited / forming waited, s) | rc |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
floor = statistics.median(r["wall_s"] for r in by["cat"]) if "cat" in by else None
for label, rs in by.items():
    if label in ("cp-base", "merge-cuda", "unmerge-cuda", "cp-tuned", "unmerge-pair"):
        continue
    w = statistics.median(r["wall_s"] for r in rs)
    rss = max(r.get("peak_rss_tree_mb", 0) for r in rs) / 1e3
    gpu = max((r.get("peak_gpu_mem_delta_mb") or 0) for r in rs)
    ratio = f"{w / floor:.2f}" if floor else "-"
    rep = report(label) if label.startswith("extract") else None
    where = rep.get("svdDevice", "-") if rep else "-"
    err = f"{rep['relativeError']:.3g}" if rep else "-"
    print(f"| {label} | {w:.2f} | {ratio} | {rss:.2f} | {gpu} | {where} | {err} | {bound(rep)} | {','.join(str(r['rc']) for r in rs)} |")
for label in by:
    rep = report(label) if label.startswith("extract") else None
    if rep and rep.get("timing"):
        print(f"{label} timing (s): " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in rep["timing"].items()))
if not extract_cpu:
    print("| extract-cpu | skipped (EXTRACT_CPU=1 runs it; longer than one device call on the 7B shape) | - | - | - | - | - | - | - |")
for floor_label, labels, title in (
        ("cp-tuned", ("cp-tuned", "unmerge-pair"), "unmerge of the extracted adapter from the tuned model (--base: the distance "
         "report) beside cp -r + sync of the tuned model (each with its sync; the issue asks <= 1.1x):"),
        ("cp-base", ("cp-base", "merge-cuda", "unmerge-cuda"), "unmerge beside the merge and cp -r + sync of the base (each with its sync):")):
    if floor_label not in by:
        continue
    cp = statistics.median(r["wall_s"] for r in by[floor_label])
    print()
    print(title)
    print("| run | wall s (median) | x cp | reps | peak RSS GB | peak GPU MiB (delta) | rc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label in labels:
        rs = by.get(label, [])
        if not rs:
            continue
        w = statistics.median(r["wall_s"] for r in rs)
        print(f"| {label} | {w:.2f} | {w / cp:.2f} | {len(rs)} | {max(r.get('peak_rss_tree_mb', 0) for r in rs) / 1e3:.2f} | "
              f"{max((r.get('peak_gpu_mem_delta_mb') or 0) for r in rs)} | {','.join(str(r['rc']) for r in rs)} |")
    rep = report(labels[-1])
    d = (rep.get("distanceToBase") or rep.get("distance_to_base")) if rep else None
    if d:
        print("distance of the unmerged model to the original base: " + json.dumps(d)[:400])
anchors = out / "anchors.json"
if anchors.exists():
    s = json.loads(anchors.read_text())["summary"]
    print()
    print(f"anchors on layers {s['layers']} ({s['modules_measured']} of {s['modules_changed']} changed modules), rank {s['rank']}, {s['device']}:")
    print("| method | seconds (measured modules) | seconds, all modules | error / optimum: median | worst |")
    print("| --- | --- | --- | --- | --- |")
    for m in ("svd", "svd_lowrank", "loramerge"):
        e = s[m]
        secs = f"{e['seconds_measured']:.2f}" if "seconds_measured" in e else "(whole run above)"
        alls = (f"{e['seconds_all_modules']:.1f}" + (" (extrapolated)" if e.get("extrapolated") else "")) if "seconds_all_modules" in e else "-"
        med = f"{e['median_ratio']:.5f}" if e["median_ratio"] is not None else "-"
        worst = f"{e['worst_ratio']:.5f}" if e["worst_ratio"] is not None else "-"
        print(f"| {m} | {secs} | {alls} | {med} | {worst} |")
EOF
say "done; logs in $OUT"
