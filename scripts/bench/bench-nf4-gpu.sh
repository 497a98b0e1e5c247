#!/usr/bin/env bash
# QLoRA end to end on the GPU machine (run through `gpu-run.sh device nf4`, carry .device):
# generates a Llama-shaped bf16 model and a rank-16 adapter (SHAPE, default llama-7b), makes an
# NF4 base with `loramerge quantize --double-quant`, then times each as a fresh process + sync,
# page cache warm, REPS times (default 3; the first merge on a fresh machine includes the driver's
# one-time compile of the PTX, which it caches; the summary gives the median of the others): `cp -r` of the NF4 base (the copy floor of the --to nf4 output) and
# `merge --to nf4 --device cuda`; `cp -r` of the bf16 model (the floor of the --to bf16 output)
# and `merge --to bf16 --device cuda`. With COMPARE_CPU=1 (default) the same merges on the CPU
# engine, whose outputs must be byte-identical (sha256). Logs under $OUT; a table last. PYTHON
# (default python3) runs the Python parts.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
OUT=${OUT:-/tmp/out}
SHAPE=${SHAPE:-llama-7b}
W=${WORK:-/tmp/lm-nf4-$SHAPE}
LM=${LORAMERGE:-java -Xmx2g -jar .device/loramerge.jar}  # the heap the ./loramerge launcher sets
mkdir -p "$OUT" "$W"
rm -rf "$W"/out-* "$W/nf4"
"$py" scripts/bench/make_synthetic.py --out "$W" --shape "$SHAPE" --gen-device "${GEN_DEVICE:-cuda}" --force > "$OUT/nf4-gen.log" 2>&1
s=$(date +%s.%N)
$LM quantize --base "$W/base" --out "$W/nf4" --double-quant --quiet > "$OUT/nf4-quantize.log" 2>&1
sync
echo "quantize --double-quant: $("$py" -c "import time; print(round(time.time() - $s, 2))") s" | tee "$OUT/nf4-table.md"
cat "$W"/nf4/* "$W"/base/* "$W"/adapter/* > /dev/null
run() { # label, command...
  local label=$1
  shift
  "$py" scripts/bench/measure.py --label "$label" --gpu -- "$@" > "$OUT/nf4-$label.json" 2> "$OUT/nf4-$label.log" || true
  "$py" - "$OUT/nf4-$label.json" "$label" "$OUT/nf4-times.txt" <<'PY'
import json, sys
text = open(sys.argv[1]).read().strip().splitlines()
d = json.loads(text[-1])
try:
    start = f"{json.loads(chr(10).join(text[:-1]))['start_seconds']:.2f}"  # a merge's --json report
except (ValueError, KeyError):
    start = "-"

times = dict(l.split() for l in open(sys.argv[3])) if __import__("os").path.exists(sys.argv[3]) else {}
label, wall = sys.argv[2], d.get('wall_s')
floor = {"merge-to-nf4": "cp-nf4", "merge-to-bf16": "cp-bf16", "cpu-to-nf4": "cp-nf4", "cpu-to-bf16": "cp-bf16"}.get(label)
ratio = f"{wall / float(times[floor]):.2f}x {floor}" if floor in times and wall else ""
open(sys.argv[3], "a").write(f"{label} {wall}\n")
print(f"| {label} | {d.get('rc')} | {wall} | {ratio} | {start} | {d.get('peak_rss_tree_mb', 0) / 1000:.2f} GB | {d.get('peak_gpu_mem_delta_mb', '-')} MB |")
PY
}
rm -f "$OUT/nf4-times.txt"
{
  echo "| run | rc | wall s (incl. sync) | vs copy floor | start s (plan + engine) | peak RSS | peak GPU |"
  echo "| --- | --- | --- | --- | --- | --- | --- |"
  for rep in $(seq "${REPS:-3}"); do
    rm -rf "$W/out-cp-nf4" "$W/out-nf4"
    run cp-nf4 cp -r "$W/nf4" "$W/out-cp-nf4"
    run merge-to-nf4 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/out-nf4" --to nf4 --device cuda --json
  done
  rm -rf "$W/out-cp-nf4"
  for rep in $(seq "${REPS:-3}"); do
    rm -rf "$W/out-cp-bf16" "$W/out-bf16"
    run cp-bf16 cp -r "$W/base" "$W/out-cp-bf16"
    rm -rf "$W/out-cp-bf16"
    run merge-to-bf16 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/out-bf16" --to bf16 --device cuda --json
  done
  if [ "${COMPARE_CPU:-1}" = 1 ]; then
    # the CPU engine on the same inputs: its output must be byte for byte the GPU's
    rm -rf "$W/cpu-nf4" "$W/cpu-bf16"
    run cpu-to-nf4 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/cpu-nf4" --to nf4 --device cpu --quiet
    (cd "$W/out-nf4" && sha256sum *.safetensors) > "$OUT/nf4-sha-gpu.txt"
    (cd "$W/cpu-nf4" && sha256sum *.safetensors) > "$OUT/nf4-sha-cpu.txt"
    rm -rf "$W/cpu-nf4"
    run cpu-to-bf16 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/cpu-bf16" --to bf16 --device cpu --quiet
    (cd "$W/out-bf16" && sha256sum *.safetensors) > "$OUT/bf16-sha-gpu.txt"
    (cd "$W/cpu-bf16" && sha256sum *.safetensors) > "$OUT/bf16-sha-cpu.txt"
    rm -rf "$W/cpu-bf16"
  fi
} | tee -a "$OUT/nf4-table.md"
echo "nf4 base $(du -sh "$W/nf4" | cut -f1), bf16 model $(du -sh "$W/base" | cut -f1)" | tee -a "$OUT/nf4-table.md"
if [ "${COMPARE_CPU:-1}" = 1 ]; then
  for t in nf4 bf16; do
    if cmp -s "$OUT/$t-sha-gpu.txt" "$OUT/$t-sha-cpu.txt"; then
      echo "--to $t: GPU and CPU outputs byte-identical ($(wc -l < "$OUT/$t-sha-gpu.txt") shards, sha256)"
    else
      echo "--to $t: GPU and CPU outputs DIFFER"
    fi
  done | tee -a "$OUT/nf4-table.md"
fi
"$py" - "$OUT/nf4-times.txt" <<'PY' | tee -a "$OUT/nf4-table.md"
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, wall = line.split()
    runs.setdefault(label, []).append(float(wall))
for merge, floor in (("merge-to-nf4", "cp-nf4"), ("merge-to-bf16", "cp-bf16")):
    m, f = runs.get(merge, []), runs.get(floor, [])
    if len(m) > 1 and len(f) > 1:
        # the first merge of a fresh machine compiles the PTX: the median of the later runs
        print(f"{merge}: median {statistics.median(m[1:]):.2f} s vs {floor} median {statistics.median(f[1:]):.2f} s = "
              f"{statistics.median(m[1:]) / statistics.median(f[1:]):.2f}x (runs 2..{len(m)}); first run {m[0]:.2f} s = {m[0] / f[0]:.2f}x")
PY
"$py" - "$OUT/nf4-merge-to-nf4.json" <<'PY' | tee -a "$OUT/nf4-table.md"
import json, sys
text = open(sys.argv[1]).read().strip().splitlines()
report = json.loads("\n".join(text[:-1]) or "{}")
r = report.get("requantization") or {}
print(f"--to nf4 survival (total): {r.get('survival', float('nan')):.3f}, aligned {r.get('aligned', float('nan')):.3f}, "
      f"codes changed {r.get('changed_share', float('nan')):.3f}; engine: {report.get('engine')}")
print(f"--to nf4 (last run): {report.get('start_seconds', float('nan')):.2f} s to start (plan + engine), "
      f"{report.get('seconds', float('nan')):.2f} s writing; the rest of the wall time is the JVM, fsync and exit")
PY
# the logs in one file (the device tool brings back a limited number of files)
tar czf "$OUT/nf4-logs.tgz" -C "$OUT" $(cd "$OUT" && ls nf4-* | grep -v -e nf4-table.md -e nf4-logs.tgz) && rm -f "$OUT"/nf4-*.json "$OUT"/nf4-*.log "$OUT"/nf4-*.txt "$OUT"/*-sha-*.txt
