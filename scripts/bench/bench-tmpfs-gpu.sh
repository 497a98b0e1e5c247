#!/usr/bin/env bash
# Where a merge from memory spends its time, in one device call: a Llama-2-7B-shaped bf16 base
# (13.48 GB, 3 shards) and a rank-16 adapter on all 7 projections, base and output in /dev/shm:
#
#   bash scripts/bench/bench-tmpfs-gpu.sh          (scripts/device/gpu-run.sh device tmpfs)
#
# Rows: `cp -r` tmpfs to tmpfs (the floor); the GPU merge with the default knobs, 3 runs; a sweep
# of the streaming knobs (org.loramerge.engine.Tuning: -Dloramerge.shards, .write, .read=pread,
# .streams, .blockBytes, .window), one run each; the CPU engine once; and the same bytes copied by the
# Java pipeline alone (an adapter that changes nothing, --allow-empty-adapter: every tensor a
# byte copy), default and positional writes. Every merge runs with --json: its "stages" give the
# dominant stage (thread seconds summed over the workers) in the table, and each row's full
# stage line follows the table. Each row is a fresh ./loramerge (the launcher, -Xmx2g, the jar's class-data archive; + sync, as measure.py
# does), wall time, GB/s of the 13.48 GB written, ratio to the cp floor, peak host RSS (VmRSS of
# the process tree, tmpfs pages it maps included) and peak GPU memory.
# Writes $OUT/tmpfs.log (everything) and $OUT/tmpfs-table.md (the table and the stage lines).
# Needs .device/jre.tgz and .device/loramerge.jar (scripts/device/gpu-run.sh pack).
# Environment: OUT (default /tmp/out), SHM (/dev/shm/lm-tmpfs), PYTHON (python3);
#   QUICK=1 (10 rows: defaults and positional writes (-Dloramerge.write=pwrite, the default before) twice each,
#   the defaults with 8 and 16 streams, 7 shards of 2 GB, mapped writes, the Java copy with the default and with
#   positional writes; for a device call shared with other steps);
#   RUNS=N (only the defaults, N runs in a row, cp -r again after them: how often a run misses 2.5 s);
#   BASELINE_JAR=path of another build's runnable jar: its defaults rows run too, each beside one of this
#   build's, in turn (the same call, the same base; e.g. the build before a change, to measure the change);
#   SHAPE, DEVICE and GEN_DEVICE (llama-7b, cuda, cuda) only to try the script out elsewhere.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}
SHM=${SHM:-/dev/shm/lm-tmpfs}
PY=${PYTHON:-python3}
SHAPE=${SHAPE:-llama-7b}
DEVICE=${DEVICE:-cuda}
GEN_DEVICE=${GEN_DEVICE:-cuda}
case "${1:-}" in -h|--help) sed -n '2,20p' "$0"; exit 0 ;; esac
mkdir -p "$OUT"
LOG=$OUT/tmpfs.log
TABLE=$OUT/tmpfs-table.md
: > "$LOG"
if ! command -v java >/dev/null 2>&1; then
  rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
fi
JAR=$ROOT/.device/loramerge.jar
# every run as users start it: the ./loramerge launcher with the jar's class-data archive
bash "$ROOT/scripts/install/make-cds.sh" "$JAR" >&2
BASELINE_JAR=${BASELINE_JAR:-}
if [ -n "$BASELINE_JAR" ]; then
  bash "$ROOT/scripts/install/make-cds.sh" "$BASELINE_JAR" >&2
fi
T0=$SECONDS
say() { echo "[tmpfs $((SECONDS - T0))s] $*" | tee -a "$LOG" >&2; }
{ echo "kernel $(uname -r), $(nproc) cores"; grep -E ' /dev/shm ' /proc/mounts || true; free -g | head -2
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true; } >> "$LOG"

rm -rf "$SHM"; mkdir -p "$SHM"
trap 'rm -rf "$SHM"' EXIT
say "generating the $SHAPE bf16 base and a rank-16 adapter in $SHM"
"$PY" scripts/bench/make_synthetic.py --out "$SHM/m" --shape "$SHAPE" --dtype bf16 --rank 16 --gen-device "$GEN_DEVICE" --force >> "$LOG" 2>&1 \
  || { tail -5 "$LOG" >&2; exit 1; }
BASE=$SHM/m/base
ADAPTER=$SHM/m/adapter
# an adapter that changes nothing: every tensor of the merge is a byte copy through the pipeline's reader and writer
EMPTY=$SHM/empty
mkdir -p "$EMPTY"
"$PY" - "$EMPTY" <<'PYEOF'
import json, struct, sys
d = sys.argv[1]
json.dump({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj"], "bias": "none"}, open(f"{d}/adapter_config.json", "w"))
h = json.dumps({"__metadata__": {"format": "pt"}}).encode()
h += b" " * (-len(h) % 8)
open(f"{d}/adapter_model.safetensors", "wb").write(struct.pack("<Q", len(h)) + h)
PYEOF
BYTES=$(du -sb "$BASE" | cut -f1)
say "base: $BYTES bytes"

rows=()   # one JSON line per row, for the table
# row LABEL KNOBS DEVICE ADAPTER [merge options]: one fresh merge into $SHM/out, timed; its JSON line kept
row() {
  local label=$1 knobs=$2 device=$3 adapter=$4; shift 4
  rm -rf "$SHM/out"
  local runlog=$OUT/.run.log
  : > "$runlog"
  local line
  # shellcheck disable=SC2086 # the knobs are separate -D words
  line=$("$PY" scripts/bench/measure.py --label "$label" --gpu --log "$runlog" -- \
    env LORAMERGE_JAR="${ROW_JAR:-$JAR}" LORAMERGE_JAVA_OPTS="-Xmx2g $knobs" "$ROOT/loramerge" merge --base "$BASE" --adapter "$adapter" --out "$SHM/out" --device "$device" --quiet --json "$@") || true
  # the run's output for the log, less the per-tensor list of its JSON (224 entries a run on the 7B shape)
  { echo "== $label ($knobs)"; "$PY" - "$runlog" <<'PYEOF'
import json, sys
log = open(sys.argv[1]).read()
start = log.find("{\n")
if start < 0:
    print(log)
else:
    print(log[:start], end="")
    try:
        r = json.loads(log[start:log.rindex("}") + 1])
        r.pop("tensors", None)
        print(json.dumps(r, indent=1))
    except ValueError:
        print(log[start:])
PYEOF
    echo "$line"; } >> "$LOG"
  rows+=("$("$PY" - "$line" "$runlog" "$label" <<'PYEOF'
import json, sys
m = json.loads(sys.argv[1]); log = open(sys.argv[2]).read()
start = log.find("{\n")
r = {}
if start >= 0:
    try:
        r = json.loads(log[start:log.rindex("}") + 1])
    except ValueError:
        r = {}
print(json.dumps({"label": sys.argv[3], "m": m, "stages": r.get("stages", {}), "written": r.get("bytes_written", 0),
                  "seconds": r.get("seconds"), "start_seconds": r.get("start_seconds")}))
PYEOF
)")
  rm -rf "$SHM/out"
  say "$label: $(echo "$line" | "$PY" -c 'import json,sys; m=json.loads(sys.stdin.read()); print(m["wall_s"], "s, exit", m["rc"])')"
}

# copy_floor: `cp -r` of the base, tmpfs to tmpfs, timed (its line in the log); prints the seconds
copy_floor() {
  rm -rf "$SHM/copy"
  local line
  line=$("$PY" scripts/bench/measure.py --label cp -- cp -r "$BASE" "$SHM/copy")
  rm -rf "$SHM/copy"
  echo "$line" >> "$LOG"
  "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' "$line"
}

say "cp -r, tmpfs to tmpfs"
CP_S=$(copy_floor)

# each: its set (quick: also with QUICK=1, the rows that tell the bound apart; all: only without it), then row's arguments
each() {
  local set=$1; shift
  if [ -z "${QUICK:-}" ] || [ "$set" = quick ]; then row "$@"; fi
}
# baseline: the defaults rows by BASELINE_JAR's build, when given, each just before one of this build's
baseline() {
  if [ -n "$BASELINE_JAR" ]; then ROW_JAR=$BASELINE_JAR row "$@"; fi
}
# sweep: the defaults beside the streaming knobs (and the baseline build's defaults)
sweep() {
  baseline "baseline build, defaults (1)" "" "$DEVICE" "$ADAPTER"
  each quick "GPU, defaults (1)" "" "$DEVICE" "$ADAPTER"
  each quick "GPU, positional writes (1)" "-Dloramerge.write=pwrite" "$DEVICE" "$ADAPTER"
  baseline "baseline build, defaults (2)" "" "$DEVICE" "$ADAPTER"
  each quick "GPU, defaults (2)" "" "$DEVICE" "$ADAPTER"
  each quick "GPU, positional writes (2)" "-Dloramerge.write=pwrite" "$DEVICE" "$ADAPTER"
  if [ -n "$BASELINE_JAR" ]; then
    for k in 3 4; do
      baseline "baseline build, defaults ($k)" "" "$DEVICE" "$ADAPTER"
      row "GPU, defaults ($k)" "" "$DEVICE" "$ADAPTER"
    done
  else
    each all "GPU, defaults (3)" "" "$DEVICE" "$ADAPTER"
  fi
  each quick "GPU, defaults, 8 streams (the default for a disk)" "-Dloramerge.streams=8" "$DEVICE" "$ADAPTER"
  each quick "GPU, defaults, 16 streams" "-Dloramerge.streams=16" "$DEVICE" "$ADAPTER"
  each all "GPU, one shard at a time" "-Dloramerge.shards=1" "$DEVICE" "$ADAPTER"
  each quick "GPU, --max-shard-size 2GB (7 shards)" "" "$DEVICE" "$ADAPTER" --max-shard-size 2GB
  each all "GPU, --max-shard-size 2GB, positional writes" "-Dloramerge.write=pwrite" "$DEVICE" "$ADAPTER" --max-shard-size 2GB
  each quick "GPU, mapped writes" "-Dloramerge.write=mapped" "$DEVICE" "$ADAPTER"
  each all "GPU, mapped writes (again)" "-Dloramerge.write=mapped" "$DEVICE" "$ADAPTER"
  each all "GPU, mapped reads (the default before)" "-Dloramerge.read=mapped" "$DEVICE" "$ADAPTER"
  each all "GPU, mapped writes and reads" "-Dloramerge.write=mapped -Dloramerge.read=mapped" "$DEVICE" "$ADAPTER"
  each all "GPU, 4 streams" "-Dloramerge.streams=4" "$DEVICE" "$ADAPTER"
  each all "GPU, positional writes, 12 streams" "-Dloramerge.write=pwrite -Dloramerge.streams=12" "$DEVICE" "$ADAPTER"
  each all "GPU, 4 MiB blocks" "-Dloramerge.blockBytes=4194304" "$DEVICE" "$ADAPTER"
  each all "GPU, 32 MiB blocks" "-Dloramerge.blockBytes=33554432" "$DEVICE" "$ADAPTER"
  each all "GPU, window 1 block a thread" "-Dloramerge.window=1" "$DEVICE" "$ADAPTER"
  each all "GPU, window 6 blocks a thread" "-Dloramerge.window=6" "$DEVICE" "$ADAPTER"
  each all "GPU, mapped writes, 12 streams" "-Dloramerge.write=mapped -Dloramerge.streams=12" "$DEVICE" "$ADAPTER"
  each all "GPU, mapped writes, 16 streams, 16 MiB blocks" "-Dloramerge.write=mapped -Dloramerge.streams=16 -Dloramerge.blockBytes=16777216" "$DEVICE" "$ADAPTER"
  each quick "Java copy (empty adapter)" "" "$DEVICE" "$EMPTY" --allow-empty-adapter
  each quick "Java copy (empty adapter), positional writes" "-Dloramerge.write=pwrite" "$DEVICE" "$EMPTY" --allow-empty-adapter
  each all "Java copy (empty adapter), one shard at a time" "-Dloramerge.shards=1" "$DEVICE" "$EMPTY" --allow-empty-adapter
  each all "Java copy (empty adapter), mapped writes" "-Dloramerge.write=mapped" "$DEVICE" "$EMPTY" --allow-empty-adapter
  each all "CPU engine" "" cpu "$ADAPTER"
  each all "CPU engine, positional writes" "-Dloramerge.write=pwrite" cpu "$ADAPTER"
}

if [ -n "${RUNS:-}" ]; then
  for k in $(seq 1 "$RUNS"); do row "GPU, defaults ($k)" "" "$DEVICE" "$ADAPTER"; done
  CP2_S=$(copy_floor)
  export CP2_S
  say "cp -r again after the runs: $CP2_S s"
else
  sweep
fi

"$PY" - "$CP_S" "$BYTES" "${rows[@]}" > "$TABLE" <<'PYEOF'
import json, os, sys
cp, size = float(sys.argv[1]), int(sys.argv[2])
rows = [json.loads(a) for a in sys.argv[3:]]
print("| case | wall s | GB/s | x cp | peak RSS GB | peak GPU GiB | stream s | outside s | dominant stage (thread s) |")
print("|---|---|---|---|---|---|---|---|---|")
print(f"| cp -r, tmpfs to tmpfs | {cp:.2f} | {size / 1e9 / cp:.2f} | 1.00 | | | | | |")
def dominant(st):
    # the engine's "merge" holds the GPU's stage_in, device_wait and host_settle; in_order_wait is the writing thread idling
    skip = {"in_order_wait"} | ({"merge"} if "stage_in" in st else set())
    cands = [(v["seconds"], k) for k, v in st.items() if v.get("clock") == "threads" and k not in skip]
    if not cands:
        return "-"
    s, k = max(cands)
    return f"{k} {s:.1f}"
for r in rows:
    m, st = r["m"], r["stages"]
    ok = "" if m["rc"] == 0 else f" (exit {m['rc']})"
    gpu = m.get("peak_gpu_mem_delta_mb")
    stream = st.get("stream", {}).get("seconds")
    # the wall time outside the report's own (from the call to the end of the merge): the JVM's start and exit, the engine's close
    outside = None if r.get("seconds") is None else m["wall_s"] - r["seconds"] - (r.get("start_seconds") or 0)
    print(f"| {r['label']}{ok} | {m['wall_s']:.2f} | {size / 1e9 / m['wall_s']:.2f} | {m['wall_s'] / cp:.2f} | "
          f"{m['peak_rss_tree_mb'] / 1000:.2f} | {'-' if gpu is None else f'{gpu / 1024:.2f}'} | "
          f"{'-' if stream is None else f'{stream:.2f}'} | {'-' if outside is None else f'{outside:.2f}'} | {dominant(st)} |")
if os.environ.get("CP2_S"):
    cp2 = float(os.environ["CP2_S"])
    print(f"| cp -r again, after the runs | {cp2:.2f} | {size / 1e9 / cp2:.2f} | {cp2 / cp:.2f} | | | | | |")
print()
print(f"{sum(1 for r in rows if r['m']['rc'] == 0 and r['m']['wall_s'] <= 2.5)} of {len(rows)} runs took 2.5 s or less.")
print()
print("Stages per row (thread stages summed over the workers, device stages over the streams; GB/s per second of the stage's own time):")
print()
for r in rows:
    parts = []
    for k, v in r["stages"].items():
        p = f"{k} {v['seconds']:.2f}" + ("" if v["clock"] == "wall" else (" thr" if v["clock"] == "threads" else " dev"))
        if v["bytes"] > 0 and v["seconds"] > 0:
            p += f" {v['bytes'] / 1e9 / v['seconds']:.1f} GB/s"
        parts.append(p)
    print(f"- {r['label']}: " + " | ".join(parts))
PYEOF
rm -f "$OUT/.run.log"
cat "$TABLE" | tee -a "$LOG"
say "done"
