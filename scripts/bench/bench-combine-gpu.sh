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
#   4. times, each as a fresh process + sync (scripts/bench/bench_run.py), weights 0.4,0.3,0.2,0.1,
#      every loramerge row `java -Xmx2g` (the launcher's heap) unless JAVA_OPTS says otherwise:
#        cp                 cp -r base (the copy floor; the issue's targets are multiples of it)
#        cat-cuda           loramerge merge --combine cat --device cuda             (target <= 1.15x cp)
#        ta-cuda            --combine task_arithmetic                                (target <= 1.15x cp)
#        ties-cuda          --combine ties --density 0.5                             (target <= 1.3x cp)
#        dare-linear-cuda   --combine dare_linear --density 0.5 --seed 1             (target <= 1.3x cp)
#        dare-ties-cuda     --combine dare_ties --density 0.5 --seed 1               (target <= 1.3x cp)
#        mprune-cuda        --combine magnitude_prune --density 0.5                  (target <= 1.3x cp)
#        cat-cpu            --combine cat --device cpu (only for the byte comparison with cat-cuda)
#        combine-svd        loramerge combine --combine svd --rank 16 --device cuda  (target: well under a minute)
#        combine-ties-svd   loramerge combine --combine ties_svd --density 0.5 --rank 16 --device cuda
#        peft-svd           scripts/bench/peft_combine.py svd, rank 16, on the GPU, over the first
#                           PEFT_LAYERS decoder layers only (below); the table labels it so,
#                           e.g. "peft-svd (2 of 32 layers)": not the whole job, unlike the other rows
#        peft-ties-svd      the same with ties_svd --density 0.5
#      with peak host RSS (process tree; target < 3 GB) and peak device memory (target < 6 GB);
#   5. checks cat-cuda against cat-cpu byte for byte (sha256 of every output file);
#   6. prints the table last, then PEFT's measured and extrapolated times beside loramerge's.
#      Everything is logged under $OUT (default /tmp/out).
#
# PEFT's add_weighted_adapter(svd) over the whole 7B model takes more than 440 s (a full
# torch.linalg.svd per module, 224 modules), more than the call has beside the other rows. So PEFT
# combines the modules of the first PEFT_LAYERS (default 2) of the 32 layers, all 7 projections of
# the same four adapters (14 modules), each module's work timed; the summary gives its measured
# time, its median per module of each projection, and the whole model's time EXTRAPOLATED from
# them (labelled so, with the measured and total module counts). A PEFT row that PEFT_BUDGET_S
# stops exits with status 3 (peft_combine.py's EXIT_STOPPED_BY_BUDGET): its table row says
# "partial (stopped by PEFT_BUDGET_S)", without a wall time or an "x cp" ratio, it does not count
# as a failure, and the summary still prints its measured and extrapolated lines. loramerge's rows always combine
# the whole model (`combine` has no option to select modules), so its per-module figure is its
# whole run over 224 modules, JVM start and reads included: the comparison favours PEFT.
#
# Time (estimates from RESULTS.md's two earlier runs of this script on an H200): generating the
# model and adapters and warming the cache ~60 s (not logged before, the progress log now says;
# the second run bounds it: 600 s of call - 440 s of PEFT - 78 s of rows leaves ~80 s); the rows
# cp 13, cat 9, task_arithmetic 9, ties 14, dare_linear ~9, dare_ties 9, magnitude_prune 14,
# cat on the CPU 39, combine svd 6, combine ties_svd 11, plus ~2 s of sync and deletion after each
# and ~10 s of hashing for the byte comparison: ~160 s; each PEFT row ~30 s of start-up (import,
# the 7B model onto the GPU, the subset adapters) plus its module work, at most PEFT_BUDGET_S
# (default 90) and one module: ~120 s each. About 490 s in all, within BUDGET_S (540 s), the
# loop's guard: a run still going at BUDGET_S seconds after the script started is ended (its row
# says "timed out") and later rows are skipped, so the table and the summary always come out.
#
# Environment: OUT, WORK (default /tmp/lm-combine-$SHAPE), SHAPE (llama-7b; tiny, 1gb, 3gb to try
#   the script out), REPS (default 1), BUDGET_S (default 540), PYTHON (python3), LORAMERGE
#   (default "java $JAVA_OPTS -jar target/loramerge-cli.jar", JAVA_OPTS default -Xmx2g), RANK (16),
#   ADAPTERS (4), DEVICE (cuda; cpu runs every row on the CPU, to try the script on a machine
#   without a GPU), PEFT_LAYERS (2), PEFT_BUDGET_S (90: seconds of module work after which a PEFT
#   row stops), SKIP_DENSE=1 (leave the dense family out), SKIP_TIES_SVD=1 (leave out both
#   ties_svd rows), SKIP_PEFT=1, REGEN=1.
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
    -h|--help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$SELF"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
ADAPTERS=${ADAPTERS:-4}
BUDGET_S=${BUDGET_S:-540}
DEVICE=${DEVICE:-cuda}
D=${DEVICE%%:*}
PEFT_LAYERS=${PEFT_LAYERS:-2}
PEFT_BUDGET_S=${PEFT_BUDGET_S:-90}
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
LORAMERGE=${LORAMERGE:-java ${JAVA_OPTS:--Xmx2g} -jar $JAR}

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
  echo "loramerge: $LORAMERGE; device $DEVICE; budget $BUDGET_S s; PEFT over the first $PEFT_LAYERS layers, at most $PEFT_BUDGET_S s of module work a row"
} >"$OUT/machine.txt" 2>&1

say "warming page cache"
ls "$WORK"/base/* "$WORK"/a*/adapter/* | xargs -P 8 -n 1 sh -c 'cat "$0" >/dev/null'
cat "$JAR" >/dev/null 2>&1 || true

MERGE="merge --base {base} $ADAPTER_ARGS --weights $WEIGHTS --out {out}"
COMBINE="combine --base {base} $ADAPTER_ARGS --weights $WEIGHTS --rank $RANK --device $DEVICE --out {out}"
PEFT="$PY scripts/bench/peft_combine.py --base {base} $PEFT_ADAPTERS --weights $WEIGHTS --svd-rank $RANK --device $DEVICE --layers $PEFT_LAYERS --budget-s $PEFT_BUDGET_S --json --out {out}"
TOOLS=(--tool "cp=cp -r {base} {out}")
TOOLS+=(--tool "cat-$D=$LORAMERGE $MERGE --combine cat --device $DEVICE")
TOOLS+=(--tool "ta-$D=$LORAMERGE $MERGE --combine task_arithmetic --device $DEVICE")
if [ -z "${SKIP_DENSE:-}" ]; then
  TOOLS+=(--tool "ties-$D=$LORAMERGE $MERGE --combine ties --density 0.5 --device $DEVICE")
  TOOLS+=(--tool "dare-linear-$D=$LORAMERGE $MERGE --combine dare_linear --density 0.5 --seed 1 --device $DEVICE")
  TOOLS+=(--tool "dare-ties-$D=$LORAMERGE $MERGE --combine dare_ties --density 0.5 --seed 1 --device $DEVICE")
  TOOLS+=(--tool "mprune-$D=$LORAMERGE $MERGE --combine magnitude_prune --density 0.5 --device $DEVICE")
fi
VERIFY=()
if [ "$D" != cpu ]; then
  TOOLS+=(--tool "cat-cpu=$LORAMERGE $MERGE --combine cat --device cpu")
  VERIFY=(--verify-bytes "cat-$D,cat-cpu")
fi
# loramerge's rows before PEFT's, so that the budget ends PEFT's, not theirs
TOOLS+=(--tool "combine-svd=$LORAMERGE $COMBINE --combine svd")
[ -z "${SKIP_TIES_SVD:-}" ] && TOOLS+=(--tool "combine-ties-svd=$LORAMERGE $COMBINE --combine ties_svd --density 0.5")
[ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-svd=$PEFT --combination-type svd")
[ -z "${SKIP_TIES_SVD:-}" ] && [ -z "${SKIP_PEFT:-}" ] && TOOLS+=(--tool "peft-ties-svd=$PEFT --combination-type ties_svd --density 0.5")

# PEFT's lines (measured, per module, extrapolated) from each PEFT row's log, and loramerge's
# combine of the whole model beside them
peft_summary() {
  "$PY" - "$OUT" "$PEFT_SCOPE" "$PEFT_BUDGET_S" <<'EOF'
import json, os, re, statistics, sys
out, scope, peft_budget = sys.argv[1], sys.argv[2], sys.argv[3]
path = os.path.join(out, "results.jsonl")
runs = [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
def median_wall(label):
    w = [r["wall_s"] for r in runs
         if r["label"] == label and r.get("rc") == 0 and not r.get("timed_out") and r.get("wall_s")]
    return statistics.median(w) if w else None
for peft, lm in (("peft-svd", "combine-svd"), ("peft-ties-svd", "combine-ties-svd")):
    log = os.path.join(out, f"{peft}-1.log")
    if not os.path.exists(log):
        continue
    text = open(log, errors="replace").read()
    r1 = [r for r in runs if r["label"] == peft and r.get("rep") == 1]
    how = ""
    if r1 and r1[0].get("rc") == 3 and not r1[0].get("timed_out"):
        how = f": partial (stopped by PEFT_BUDGET_S, {peft_budget} s of module work; nothing saved)"
    elif r1 and r1[0].get("timed_out"):
        how = ": timed out at BUDGET_S"
    elif r1 and r1[0].get("rc") != 0:
        how = f": FAILED (exit status {r1[0].get('rc')})"
    print(f"{peft}{scope} (repetition 1){how}:")
    lines = re.findall(r"^\[peft_combine\] ((?:measured|per module|extrapolated|stopped).*)$", text, re.M)
    for l in lines:
        print(f"    {l}")
    if not lines:
        done = [float(x) for x in re.findall(r"^\[peft_combine\] module \S+ \S+ ([\d.]+) s$", text, re.M)]
        print(f"    no summary: it did not finish ({len(done)} modules done, in {sum(done):.1f} s; see {log})")
    js = [json.loads(l) for l in text.splitlines() if l.startswith('{"tool": "peft_combine"')]
    lw = median_wall(lm)
    if js and lw:
        j = js[0]
        n = j.get("modules_total") or 0
        est = j.get("extrapolated_modules_s", j.get("modules_seconds"))
        if n and est:
            kind = "extrapolated" if "extrapolated_modules_s" in j else "measured"
            print(f"    loramerge {lm}: the whole model ({n} modules) in {lw:.2f} s wall, {lw / n:.3f} s a module"
                  f" (JVM start and reads included); PEFT's module work alone, {kind}: {est:.0f} s,"
                  f" {est / lw:.{0 if est >= 10 * lw else 1}f}x loramerge's whole run")
EOF
}

# a PEFT row over a layer subset is not the whole job: its table label says so
TOTAL_LAYERS=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("num_hidden_layers", ""))' "$WORK/base/config.json")
PEFT_SCOPE=""
LABELS=()
if [ -n "$TOTAL_LAYERS" ] && [ "$PEFT_LAYERS" -lt "$TOTAL_LAYERS" ]; then
  PEFT_SCOPE=" ($PEFT_LAYERS of $TOTAL_LAYERS layers)"
  LABELS=(--label "peft-svd=peft-svd$PEFT_SCOPE" --label "peft-ties-svd=peft-ties-svd$PEFT_SCOPE")
fi

set +e
"$PY" scripts/bench/bench_run.py --base "$WORK/base" --adapter "$WORK/a1/adapter" --work "$WORK" --logs "$OUT" \
  --reps "$REPS" --gpu --budget-s "$BUDGET_S" --python "$PY" --baseline cp --floor cp \
  --partial "3:stopped by PEFT_BUDGET_S" ${LABELS[@]+"${LABELS[@]}"} \
  ${VERIFY[@]+"${VERIFY[@]}"} "${TOOLS[@]}" >"$OUT/table.out" 2>&3
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
  peft_summary
  echo
  echo "wall = fresh process + sync, page cache warm; peak GPU = nvidia-smi used minus idle; logs: $OUT"
} | tee "$OUT/summary.md"
exit $rc
