#!/usr/bin/env bash
# QLoRA end to end on the GPU machine (run through `gpu-run.sh device nf4`, carry .device):
# generates a Llama-shaped bf16 model and a rank-16 adapter (SHAPE, default 3gb), makes an NF4
# base with `loramerge quantize --double-quant`, then times each as a fresh process + sync, page
# cache warm: `cp -r` of the NF4 base (the copy floor of the --to nf4 output), `merge --to nf4`,
# `cp -r` of the bf16 model (the floor of the --to bf16 output) and `merge --to bf16`.
# Logs under $OUT; a table last.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
SHAPE=${SHAPE:-3gb}
W=${WORK:-/tmp/lm-nf4-$SHAPE}
LM=${LORAMERGE:-java -jar .device/loramerge.jar}
mkdir -p "$OUT" "$W"
rm -rf "$W"/out-* "$W/nf4"
python3 scripts/make_synthetic.py --out "$W" --shape "$SHAPE" --gen-device "${GEN_DEVICE:-cuda}" --force > "$OUT/nf4-gen.log" 2>&1
s=$(date +%s.%N)
$LM quantize --base "$W/base" --out "$W/nf4" --double-quant --quiet > "$OUT/nf4-quantize.log" 2>&1
sync
echo "quantize --double-quant: $(python3 -c "import time; print(round(time.time() - $s, 2))") s" | tee "$OUT/nf4-table.md"
cat "$W"/nf4/* "$W"/base/* "$W"/adapter/* > /dev/null
run() { # label, command...
  local label=$1
  shift
  python3 scripts/measure.py --label "$label" --gpu -- "$@" > "$OUT/nf4-$label.json" 2> "$OUT/nf4-$label.log"
  python3 - "$OUT/nf4-$label.json" "$label" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"| {sys.argv[2]} | {d.get('rc')} | {d.get('wall_s')} | {d.get('peak_rss_tree_mb', 0) / 1000:.2f} GB | {d.get('peak_gpu_mem_delta_mb', '-')} MB |")
PY
}
{
  echo "| run | rc | wall s (incl. sync) | peak RSS | peak GPU |"
  echo "| --- | --- | --- | --- | --- |"
  run cp-nf4 cp -r "$W/nf4" "$W/out-cp-nf4"
  run merge-to-nf4 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/out-nf4" --to nf4 --device "${DEVICE:-cuda}" --json
  rm -rf "$W/out-cp-nf4"
  run cp-bf16 cp -r "$W/base" "$W/out-cp-bf16"
  rm -rf "$W/out-cp-bf16"
  run merge-to-bf16 $LM merge --base "$W/nf4" --adapter "$W/adapter" --out "$W/out-bf16" --to bf16 --device "${DEVICE:-cuda}"
} | tee -a "$OUT/nf4-table.md"
echo "nf4 base $(du -sh "$W/nf4" | cut -f1), bf16 model $(du -sh "$W/base" | cut -f1)" | tee -a "$OUT/nf4-table.md"
python3 - "$OUT/nf4-merge-to-nf4.json" <<'PY' | tee -a "$OUT/nf4-table.md"
import json, sys
text = open(sys.argv[1]).read().strip().splitlines()
report = json.loads("\n".join(text[:-1]) or "{}")
r = report.get("requantization") or {}
print(f"--to nf4 survival (total): {r.get('survival', float('nan')):.3f}, aligned {r.get('aligned', float('nan')):.3f}, "
      f"codes changed {r.get('changedShare', float('nan')):.3f}")
PY
