#!/usr/bin/env bash
# Every kind of adapter and base a user has, end to end on the GPU machine, beside the copy floor
# of the same files, in one device call (the "no cliffs" table):
#
#   bash scripts/bench/bench-cases-gpu.sh [bf16|f16|f32|io|wide|flush] ...  (default: bf16)
#
#   bf16   a Llama-2-7B-shaped bf16 base (13.48 GB, 3 shards) and rank-16 adapters on all 7
#          projections: random F32 factors; F32 factors that are bf16 numbers; rsLoRA rank 64; DoRA;
#          LoRA on embed_tokens and lm_head plus 16 trainable token rows; --dtype f16; --dtype f32, beside
#          the copy of the 27 GB it writes (timed just before it) and against the base's copy too;
#          the NF4 base made by `loramerge quantize --double-quant` with --to nf4 and --to bf16 for
#          both kinds of factors; base and output on tmpfs (also written as 2 GB shards); the first
#          run after clearing the driver's compute cache
#   f16    the same shape in f16: LoRA, and --dtype bf16
#   f32    a 16-layer f32 base (13.3 GB; the 32-layer one and its output do not fit the disk): LoRA
#   io     the rows bound by the disk or by memory, with the copy floor timed before each set: twice
#          the bf16 base's LoRA, --dtype f32 (which writes twice the floor's bytes) and dd writing as
#          many bytes (the disk's own rate); three times base and output on tmpfs: the base's 3 shards
#          with the default writes and with positional ones, and 7 shards; then the host's memcpy
#          bandwidth (what tmpfs runs at)
#   wide   --dtype f32 of the bf16 base three times (WIDE_REPS), each beside two floors timed just before it: the
#          base's copy, and the copy of what it writes (27 GB: `cp -r` of a folder holding the base's
#          shards twice, as hard links, which cp copies as separate files)
#   flush  --dtype f32 of the bf16 base with a background flush every 256 MiB of a shard (the default),
#          1 GiB, 64 MiB and none before the shard's end (-Dloramerge.flushBytes), twice, each pass
#          beside its copy floor
#
# Each row: a fresh ./loramerge (the launcher: -Xmx2g and the jar's class-data archive) + sync, page cache warm, wall time, its ratio to the copy
# floor (`cp -r` + sync of what the row reads: the base, or the NF4 base for --to nf4), the
# elements decided exactly (expansion arithmetic) and by the decimal last resort, peak host RSS
# and peak GPU memory. Needs .device/jre.tgz and .device/loramerge.jar (scripts/device/gpu-run.sh pack).
# Environment: OUT (default /tmp/out), WORK (/tmp/lm-cases), PYTHON (python3), RANK (16);
#   SHAPE, DEVICE and GEN_DEVICE (llama-7b, cuda, cuda) only to try the script out elsewhere.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-/tmp/out}
WORK=${WORK:-/tmp/lm-cases}
PY=${PYTHON:-python3}
RANK=${RANK:-16}
SHAPE=${SHAPE:-llama-7b}
DEVICE=${DEVICE:-cuda}
GEN_DEVICE=${GEN_DEVICE:-cuda}
case "${1:-}" in -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;; esac
mkdir -p "$OUT" "$WORK"
if ! command -v java >/dev/null 2>&1; then
  rm -rf /tmp/jre && tar xzf .device/jre.tgz -C /tmp
  export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
fi
# every run as users start it: the ./loramerge launcher (-Xmx2g) with the jar's class-data archive
bash "$ROOT/scripts/install/make-cds.sh" "$ROOT/.device/loramerge.jar" >&2
LM="env LORAMERGE_JAR=$ROOT/.device/loramerge.jar $ROOT/loramerge"
TABLE=$OUT/cases.md
[ -f "$TABLE" ] || printf '| case | wall s | x floor | exactly rounded | decimal fallbacks | peak RSS GB | peak GPU GiB |\n|---|---|---|---|---|---|---|\n' > "$TABLE"
T0=$SECONDS
say() { echo "[cases $((SECONDS - T0))s] $*" >&2; }

# run LABEL FLOOR_SECONDS CMD...: one timed run; the row goes to the table
run() {
  local label=$1 floor=$2; shift 2
  local log=$OUT/run-${label//[^A-Za-z0-9_.-]/_}.log
  local line
  line=$("$PY" scripts/bench/measure.py --label "$label" --gpu --log "$log" -- "$@") || true
  "$PY" - "$line" "$log" "$floor" "$label" >> "$TABLE" <<'PYEOF'
import json, sys
m = json.loads(sys.argv[1]); log = open(sys.argv[2]).read(); floor = float(sys.argv[3]); label = sys.argv[4]
rounded = fallbacks = "-"
start = log.find("{\n")
if start >= 0:
    try:
        r = json.loads(log[start:log.rindex("}") + 1])
        ts = r.get("tensors", [])
        rounded = sum(t.get("exactly_rounded", 0) for t in ts)
        fallbacks = sum(t.get("exact_fallbacks", 0) for t in ts)
    except ValueError:
        pass
ok = "" if m["rc"] == 0 else f" (exit {m['rc']})"
ratio = f"{m['wall_s'] / floor:.2f}" if floor > 0 else "1.00"
gpu = m.get("peak_gpu_mem_delta_mb")
print(f"| {label}{ok} | {m['wall_s']:.2f} | {ratio} | {rounded} | {fallbacks} | {m['peak_rss_tree_mb'] / 1000:.2f} | "
      f"{'-' if gpu is None else f'{gpu / 1024:.2f}'} |")
PYEOF
  tail -n 1 "$TABLE" >&2
}
# floor SRC: cp -r + sync of SRC, timed; prints the seconds
floor() {
  rm -rf "$WORK/copy"
  local line
  line=$("$PY" scripts/bench/measure.py --label cp -- cp -r "$1" "$WORK/copy")
  rm -rf "$WORK/copy"
  "$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' "$line"
}
merge() { # LABEL FLOOR BASE ADAPTER [options]: a merge into WORK/out, removed after
  local label=$1 fl=$2 base=$3 adapter=$4; shift 4
  rm -rf "$WORK/out"
  run "$label" "$fl" $LM merge --base "$base" --adapter "$adapter" --out "$WORK/out" --device "$DEVICE" --quiet --json "$@"
  rm -rf "$WORK/out"
}
gen() { # DIR DTYPE [make_synthetic options]
  local dir=$1 dtype=$2; shift 2
  "$PY" scripts/bench/make_synthetic.py --out "$dir" --shape "$SHAPE" --dtype "$dtype" --gen-device "$GEN_DEVICE" --force "$@" > "$OUT/gen.log" 2>&1 \
    || { tail -5 "$OUT/gen.log" >&2; exit 1; }
}
adapter() { # DIR NAME [options]: another adapter for the base in DIR
  "$PY" scripts/bench/make_synthetic.py --out "$1" --shape "$SHAPE" --adapter-only --adapter-dir "$1/$2" --rank "$RANK" --gen-device "$GEN_DEVICE" --force "${@:3}" \
    > "$OUT/gen-$2.log" 2>&1 || { tail -5 "$OUT/gen-$2.log" >&2; exit 1; }
}
bf16_base_and_adapter() { # the io and flush sets' bf16 base and random-F32-factor adapter (a-f32) in WORK/m, synced and warm
  say "generating the bf16 base and an adapter"
  gen "$WORK/m" bf16 --base-only
  adapter "$WORK/m" a-f32
  sync; warm "$WORK/m"
}
floor_row() { # REP: the bf16 base's copy floor, timed now into F, as a table row
  F=$(floor "$WORK/m/base"); say "copy floor $F s"
  echo "| cp -r + sync, bf16 base ($1) | $F | 1.00 | | | | |" >> "$TABLE"
}
wide_floor() { # [SUFFIX]: the copy of what --dtype f32 of the bf16 base writes (27 GB: `cp -r` of a folder holding the
  # base's shards twice, as hard links, which cp copies as separate files), timed now into F2, as a table row
  if [ ! -d "$WORK/twice" ]; then
    mkdir -p "$WORK/twice"
    for f in "$WORK/m/base"/*; do ln "$f" "$WORK/twice/$(basename "$f")"; ln "$f" "$WORK/twice/again-$(basename "$f")"; done
  fi
  F2=$(floor "$WORK/twice"); say "copy floor of the f32 output's size $F2 s"
  echo "| cp -r + sync, the base's shards twice (27 GB)${1:-} | $F2 | $(awk -v a="$F2" -v b="$F" 'BEGIN { printf "%.2f", a / b }') (x base floor) | | | | |" >> "$TABLE"
}
wide_merge() { # [SUFFIX]: --dtype f32 of the bf16 base beside wide_floor, taken just before it, and on the next row against the
  # base's floor F: it writes 27 GB, twice what the base's copy writes, so its floor is the copy of as many bytes, as the
  # NF4 --to bf16 rows' is the bf16 copy (the copy of the larger of what a row reads and what it writes)
  wide_floor "${1:-}"
  merge "--dtype f32 (bf16 base) (floor: 27 GB copy)${1:-}" "$F2" "$WORK/m/base" "$WORK/m/a-f32" --dtype f32
  tail -n 1 "$TABLE" | awk -F' [|] ' -v f="$F" -v s="${1:-}" '{ printf "| the same run, x the base floor%s | %s | %.2f | | | | |\n", s, $2, $2 / f }' >> "$TABLE"
}
warm() { find "$@" -type f -print0 | xargs -0 -P 8 -n 1 sh -c 'cat "$0" > /dev/null'; }

for set in "${@:-bf16}"; do
  rm -rf "$WORK"/*
  case "$set" in
  bf16)
    say "generating the bf16 base and adapters"
    gen "$WORK/m" bf16 --base-only
    adapter "$WORK/m" a-f32
    adapter "$WORK/m" a-bf16 --factors bf16-values
    adapter "$WORK/m" a-rs64 --rslora --rank 64 --alpha 128
    adapter "$WORK/m" a-dora --dora
    adapter "$WORK/m" a-emb --embeddings --trainable-tokens 16
    sync; warm "$WORK/m"
    F=$(floor "$WORK/m/base"); say "copy floor $F s"
    echo "| cp -r + sync, bf16 base | $F | 1.00 | | | | |" >> "$TABLE"
    merge "LoRA, random F32 factors" "$F" "$WORK/m/base" "$WORK/m/a-f32"
    merge "LoRA, F32 factors that are bf16 values" "$F" "$WORK/m/base" "$WORK/m/a-bf16"
    merge "rsLoRA rank 64" "$F" "$WORK/m/base" "$WORK/m/a-rs64"
    merge "DoRA" "$F" "$WORK/m/base" "$WORK/m/a-dora"
    merge "LoRA on embed_tokens + lm_head + 16 trainable tokens" "$F" "$WORK/m/base" "$WORK/m/a-emb"
    merge "--dtype f16 (bf16 base)" "$F" "$WORK/m/base" "$WORK/m/a-f32" --dtype f16
    wide_merge
    say "quantizing to NF4"
    $LM quantize --base "$WORK/m/base" --out "$WORK/nf4" --double-quant --quiet
    sync; warm "$WORK/nf4"
    N=$(floor "$WORK/nf4"); say "NF4 copy floor $N s"
    echo "| cp -r + sync, NF4 base | $N | 1.00 | | | | |" >> "$TABLE"
    merge "NF4 --to nf4, random F32 factors" "$N" "$WORK/nf4" "$WORK/m/a-f32" --to nf4
    merge "NF4 --to nf4, bf16-value factors" "$N" "$WORK/nf4" "$WORK/m/a-bf16" --to nf4
    merge "NF4 --to bf16, random F32 factors (floor: bf16 copy)" "$F" "$WORK/nf4" "$WORK/m/a-f32" --to bf16
    merge "NF4 --to bf16, bf16-value factors (floor: bf16 copy)" "$F" "$WORK/nf4" "$WORK/m/a-bf16" --to bf16
    rm -rf "$WORK/nf4"
    say "first run after clearing the driver's compute cache"
    rm -rf "$HOME/.nv/ComputeCache"
    merge "first run, compute cache cleared" "$F" "$WORK/m/base" "$WORK/m/a-f32"
    say "tmpfs"
    SHM=/dev/shm/lm-cases; rm -rf "$SHM"; mkdir -p "$SHM"
    cp -r "$WORK/m/base" "$SHM/base"; cp -r "$WORK/m/a-f32" "$SHM/a-f32"
    rm -rf "$SHM/copy"; T=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' \
      "$("$PY" scripts/bench/measure.py --label cp-shm -- cp -r "$SHM/base" "$SHM/copy")"); rm -rf "$SHM/copy"
    echo "| cp -r, tmpfs to tmpfs | $T | 1.00 | | | | |" >> "$TABLE"
    rm -rf "$SHM/out"
    run "LoRA, base and output on tmpfs" "$T" $LM merge --base "$SHM/base" --adapter "$SHM/a-f32" --out "$SHM/out" --device "$DEVICE" --quiet --json
    rm -rf "$SHM/out"
    run "LoRA, tmpfs, --max-shard-size 2GB (7 shards)" "$T" $LM merge --base "$SHM/base" --adapter "$SHM/a-f32" --out "$SHM/out" --device "$DEVICE" \
      --quiet --json --max-shard-size 2GB
    rm -rf "$SHM"
    ;;
  f16)
    say "generating the f16 base"
    gen "$WORK/m" fp16
    sync; warm "$WORK/m"
    F=$(floor "$WORK/m/base")
    echo "| cp -r + sync, f16 base | $F | 1.00 | | | | |" >> "$TABLE"
    merge "F16 base, LoRA" "$F" "$WORK/m/base" "$WORK/m/adapter"
    merge "F16 base, --dtype bf16" "$F" "$WORK/m/base" "$WORK/m/adapter" --dtype bf16
    ;;
  f32)
    say "generating a 16-layer f32 base"
    gen "$WORK/m" fp32 --layers 16 --shards 3
    sync; warm "$WORK/m"
    F=$(floor "$WORK/m/base")
    echo "| cp -r + sync, f32 base (16 layers) | $F | 1.00 | | | | |" >> "$TABLE"
    merge "F32 base (16 layers), LoRA" "$F" "$WORK/m/base" "$WORK/m/adapter"
    ;;
  flush)
    bf16_base_and_adapter
    for rep in 1 2; do
      floor_row "$rep"
      for flush in 268435456 1073741824 67108864 0; do
        run "--dtype f32, -Dloramerge.flushBytes=$flush ($rep)" "$F" env LORAMERGE_JAVA_OPTS="-Xmx2g -Dloramerge.flushBytes=$flush" \
          $LM merge --base "$WORK/m/base" --adapter "$WORK/m/a-f32" --out "$WORK/out" --device "$DEVICE" --quiet --json --dtype f32
        rm -rf "$WORK/out"
      done
    done
    ;;
  wide)
    bf16_base_and_adapter
    for rep in $(seq 1 "${WIDE_REPS:-3}"); do
      floor_row "$rep"
      wide_merge " ($rep)"
    done
    ;;
  io)
    bf16_base_and_adapter
    for rep in 1 2; do
      floor_row "$rep"
      merge "LoRA, random F32 factors ($rep)" "$F" "$WORK/m/base" "$WORK/m/a-f32"
      merge "--dtype f32 (bf16 base) ($rep)" "$F" "$WORK/m/base" "$WORK/m/a-f32" --dtype f32
      # what the disk takes for the bytes --dtype f32 writes (27 GB), written by dd and flushed, beside them
      run "dd of the f32 output's bytes + fdatasync ($rep)" "$F" dd if=/dev/zero of="$WORK/raw" bs=64M count=$(( (2 * $(du -sb "$WORK/m/base" | cut -f1) + (64 << 20) - 1) / (64 << 20) )) conv=fdatasync status=none
      rm -f "$WORK/raw"
    done
    SHM=/dev/shm/lm-cases; rm -rf "$SHM"; mkdir -p "$SHM"
    cp -r "$WORK/m/base" "$SHM/base"; cp -r "$WORK/m/a-f32" "$SHM/a-f32"
    rm -rf "$WORK"/*
    for rep in 1 2 3; do
      rm -rf "$SHM/copy"; T=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["wall_s"])' \
        "$("$PY" scripts/bench/measure.py --label cp-shm -- cp -r "$SHM/base" "$SHM/copy")"); rm -rf "$SHM/copy"
      echo "| cp -r, tmpfs to tmpfs ($rep) | $T | 1.00 | | | | |" >> "$TABLE"
      for shards in 3 3p 7; do
        rm -rf "$SHM/out"
        # 3p: the base's 3 shards with positional writes only (-Dloramerge.write=pwrite, the default before mixed writes)
        run "LoRA, tmpfs, ${shards/3p/3 shards, positional writes}$([ "$shards" = 3p ] || echo " shards") ($rep)" "$T" \
          env LORAMERGE_JAVA_OPTS="-Xmx2g$([ "$shards" = 3p ] && echo " -Dloramerge.write=pwrite")" $LM merge --base "$SHM/base" --adapter "$SHM/a-f32" --out "$SHM/out" \
          --device "$DEVICE" --quiet --json $([ "$shards" = 7 ] && echo --max-shard-size 2GB)
      done
    done
    rm -rf "$SHM"
    if command -v gcc > /dev/null; then
      gcc -O2 -pthread -o "$WORK/memcpy" -x c - <<'CEOF' && "$WORK/memcpy" 1 4 8 16 | tee "$OUT/memcpy.txt" >&2
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define SZ (256L << 20)
static pthread_barrier_t bar;
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void *work(void *a) {
    char *x = malloc(SZ), *y = malloc(SZ);
    memset(x, 1, SZ); memset(y, 2, SZ);
    pthread_barrier_wait(&bar);
    for (int i = 0; i < 8; i++) memcpy(i & 1 ? x : y, i & 1 ? y : x, SZ);
    pthread_barrier_wait(&bar);
    free(x); free(y);
    return a;
}
int main(int argc, char **argv) {
    for (int k = 1; k < argc; k++) {
        int t = atoi(argv[k]);
        pthread_t th[256];
        pthread_barrier_init(&bar, 0, t + 1);
        for (int i = 0; i < t; i++) pthread_create(&th[i], 0, work, 0);
        pthread_barrier_wait(&bar);
        double t0 = now();
        pthread_barrier_wait(&bar);
        double s = now() - t0;
        for (int i = 0; i < t; i++) pthread_join(th[i], 0);
        printf("memcpy, %d threads: %.1f GB/s copied\n", t, (double)t * 8 * SZ / s / 1e9);
        pthread_barrier_destroy(&bar);
    }
    return 0;
}
CEOF
    fi
    ;;
  *) echo "unknown set $set (bf16, f16, f32, io, wide, flush)" >&2; exit 2 ;;
  esac
done
rm -rf "$WORK"
echo; echo "## $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo "no GPU"), $(date -u +%Y-%m-%d), $(nproc) cores"; cat "$TABLE"
