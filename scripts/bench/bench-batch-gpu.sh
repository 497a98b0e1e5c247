#!/usr/bin/env bash
# Many merges of one base (issue 16), end to end on the GPU machine, in one device call.
#
#   bash scripts/bench/bench-batch-gpu.sh
#
# Needs, carried with the working tree:  .device/jre.tgz  (scripts/device/make-jre.sh, here)
#                                         target/loramerge-cli.jar (mvn -DskipTests package, here)
# e.g. run(command="bash scripts/bench/bench-batch-gpu.sh", carry=[".device", "target/loramerge-cli.jar"])
#
# What it does
#   1. unpacks the runtime to /tmp/jre (when `java` is missing) and puts it on PATH;
#   2. generates the 3gb preset (1.5B parameters, 3.02 GB bf16, 2 shards) and ADAPTERS (16) rank-16
#      adapters on all 7 projections (seeds 1..16) into $WORK, then `sync` (reused if already there);
#   3. writes a manifest of one merge per adapter, warms the page cache;
#   4. times `loramerge batch` over that manifest, each variant a fresh process + sync, the outputs
#      and the state deleted between variants (16 outputs take 16 x the base's size on disk):
#        cp-all            cp -r base, once per adapter, one after the other (the copy floor of the batch)
#        shared-1gpu       --devices cuda:0                    (one pass over the base for all lines)
#        separate-1gpu     --devices cuda:0 --no-shared-read   (16 merges one after the other)
#        separate-1gpu-x2  --devices cuda:0 --parallel 2 --no-shared-read (two merges at once on one GPU)
#        shared-2gpu       --devices all (two groups of 8, one per GPU; only with 2 or more GPUs)
#        separate-2gpu     --devices all --no-shared-read      (only with 2 or more GPUs)
#        cpu               --devices cpu (shared; RUN_CPU=1, slow)
#   5. checks that every variant wrote the same bytes per line (the checksums of `batch --json`);
#   6. prints a table last: wall, GB written per second, ratio to the copy floor. The per-merge
#      figures are in each variant's JSON, in $OUT/batch-details.tgz.
#
# What bounds each (to be read off the table): the copy floor is the disk; separate merges read the
# base 16 times (from the page cache after the first) and upload it to the GPU 16 times; the shared
# pass reads and uploads each block once and applies the 16 adapters to it on the device, so what
# is left is 16 outputs coming down over PCIe and going to disk.
#
# Environment: OUT (default /tmp/out), WORK (default /tmp/lm-batch-$SHAPE), SHAPE (3gb; 1gb or tiny
#   to try the script out), ADAPTERS (16), RANK (16), PYTHON (python3), LORAMERGE (default
#   "java $JAVA_OPTS -jar target/loramerge-cli.jar"), RUN_CPU=1, REGEN=1, DEVICE (cuda:0; cpu to try the
#   script out on a machine without a GPU).
set -euo pipefail
T0=$(date +%s.%N)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
case ${1:-} in -h|--help) sed -n '2,37p' "$0"; exit 0 ;; esac
OUT=${OUT:-/tmp/out}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
ADAPTERS=${ADAPTERS:-16}
SHAPE=${SHAPE:-3gb}
case $SHAPE in 3gb|1gb|tiny) ;; *) echo "SHAPE must be 3gb, 1gb or tiny" >&2; exit 2 ;; esac
WORK=${WORK:-/tmp/lm-batch-$SHAPE}
mkdir -p "$OUT" "$WORK"
say() { echo "[bench-batch $(awk -v t0="$T0" -v t="$(date +%s.%N)" 'BEGIN{printf "%5.0f", t-t0}')s] $*" | tee -a "$OUT/progress.log" >&2; }

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

STAMP="$SHAPE rank=$RANK adapters=$ADAPTERS"
if [ -n "${REGEN:-}" ] || [ ! -f "$WORK/.stamp" ] || [ "$(cat "$WORK/.stamp")" != "$STAMP" ]; then
  say "generating $STAMP into $WORK"
  rm -rf "$WORK" && mkdir -p "$WORK"
  "$PY" scripts/bench/make_synthetic.py --out "$WORK" --shape "$SHAPE" --rank "$RANK" --seed 0 \
    --gen-device auto --base-only --force >"$OUT/make_synthetic.log" 2>&1 || { cat "$OUT/make_synthetic.log" >&2; exit 1; }
  # the adapters are small: made 8 at a time (each process mostly imports torch)
  seq 1 "$ADAPTERS" | PY=$PY WORK=$WORK SHAPE=$SHAPE RANK=$RANK xargs -P 8 -I{} sh -c \
    '"$PY" scripts/bench/make_synthetic.py --out "$WORK/a{}" --shape "$SHAPE" --rank "$RANK" --seed {} \
       --gen-device auto --adapter-only --force > "$WORK/make_synthetic_a{}.log" 2>&1 || { cat "$WORK/make_synthetic_a{}.log"; exit 255; }' \
    >>"$OUT/make_synthetic.log" 2>&1 || { cat "$OUT/make_synthetic.log" >&2; exit 1; }
  cat "$WORK"/make_synthetic_a*.log >>"$OUT/make_synthetic.log" && rm -f "$WORK"/make_synthetic_a*.log
  sync
  echo "$STAMP" >"$WORK/.stamp"
else
  say "reusing $WORK ($STAMP)"
fi
MANIFEST=$WORK/merges.jsonl
: >"$MANIFEST"
for i in $(seq 1 "$ADAPTERS"); do
  echo "{\"base\": \"base\", \"adapter\": \"a$i/adapter\", \"out\": \"out/m$i\"}" >>"$MANIFEST"
done
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU" || true)
BASE_BYTES=$(du -sb "$WORK/base" | cut -f1)
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  nproc: $(nproc)  gpus: $GPUS"
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | paste -sd';')"
  echo "java: $(java -version 2>&1 | head -1)"
  echo "model: $SHAPE, $(awk -v b="$BASE_BYTES" 'BEGIN{printf "%.2f GB", b/1e9}'); $ADAPTERS adapters r=$RANK"
} >"$OUT/machine.txt" 2>&1
say "warming page cache"
ls "$WORK"/base/* "$WORK"/a*/adapter/* | xargs -P 8 -n 1 sh -c 'cat "$0" >/dev/null'

ROWS=()
clean() { rm -rf "$WORK/out" "$WORK/merges.jsonl.state" "$WORK/cp"; sync; }
DETAILS=$WORK/details
rm -rf "$DETAILS" && mkdir -p "$DETAILS"
want() { [ -z "${VARIANTS:-}" ] || [[ " $VARIANTS " == *" $1 "* ]]; }
timed() { # name command...: wall seconds of the command and a sync
  local name=$1; shift
  want "$name" || [ "$name" = cp-all ] || return 0
  clean
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" >"$DETAILS/$name.json" 2>"$DETAILS/$name.log" || rc=$?
  sync
  t1=$(date +%s.%N)
  local wall
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')
  say "$name: ${wall} s (exit $rc)"
  ROWS+=("$name $wall $rc")
}
copies() { mkdir -p "$WORK/cp"; for i in $(seq 1 "$ADAPTERS"); do cp -r "$WORK/base" "$WORK/cp/m$i"; done; }
batch() { $LORAMERGE batch --manifest "$MANIFEST" --json "$@"; }

timed cp-all copies
D1=${DEVICE:-cuda:0}
timed shared-1gpu batch --devices "$D1"
timed separate-1gpu batch --devices "$D1" --no-shared-read
timed separate-1gpu-x2 batch --devices "$D1" --parallel 2 --no-shared-read
if [ "$GPUS" -ge 2 ]; then
  timed shared-2gpu batch --devices all
  timed separate-2gpu batch --devices all --no-shared-read
fi
[ -n "${RUN_CPU:-}" ] && timed cpu batch --devices cpu
clean

set +e
"$PY" - "$DETAILS" "$BASE_BYTES" "$ADAPTERS" "${ROWS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
out, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = [r.split() for r in sys.argv[4:]]
floor = max(float(rows[0][1]), 0.1)  # the table's resolution; a tiny shape copies in no time
sums, ok = {}, True
print("| variant | wall s | GB/s written | x copy floor | exit |")
print("| --- | --- | --- | --- | --- |")
for name, wall, rc in rows:
    w = max(float(wall), 0.1)
    print(f"| {name} | {w:.1f} | {n * base / 1e9 / w:.2f} | {w / floor:.2f} | {rc} |")
    if name.startswith("cp"):
        continue
    try:
        j = json.load(open(os.path.join(out, name + ".json")))
        sums[name] = {m["line"]: m["checksum"] for m in j["merges"]}
    except Exception as e:
        print(f"{name}: no JSON summary ({e})"); ok = False
ref = next(iter(sums.values()), None)
for name, s in sums.items():
    if s != ref or None in s.values():
        print(f"bytes differ: {name}"); ok = False
print("same bytes in every variant: " + ("yes" if ok else "NO"))
sys.exit(0 if ok else 1)
PY
rc=$?
tar czf "$OUT/batch-details.tgz" -C "$DETAILS" .
exit $rc
