#!/usr/bin/env bash
# Runs the GPU-tagged tests against each mutant of a bundle made by `plant.py gpu-pack BUNDLE`,
# on the GPU machine (CUDA, no Java: the bundle brings its runtime). From the repository root:
#
#   bash scripts/mutation/run-gpu.sh BUNDLE [ID ...]        (default: every mutant in BUNDLE/ids.txt)
#
# First the unmutated jars (all GPU tests must pass, or nothing is measured), then per mutant the
# same tests with the mutant's changed classes or PTX first on the class path. Verdicts:
#   killed    a test failed, or the run passed MUTANT_TIMEOUT seconds (default 300)
#   survived  every GPU test passed
#   no-gpu    nothing failed but no test ran on the GPU (all skipped): not a verdict, rerun
# Writes $OUT/gpu-mutants.md (the table for `plant.py gpu-record`) and $OUT/gpu-mutant-logs.tgz (a log
# and JUnit XML report per run). SKIP_BASELINE=1 skips the unmutated run (a second call on a machine
# whose baseline already passed).
set -uo pipefail
cd "$(dirname "$0")/../.."
bundle=${1:?usage: run-gpu.sh BUNDLE [ID ...]}
shift
# the runtime and logs go to BUNDLE/run, removed on exit (the bundle is carried: keep it small);
# what comes back goes to $OUT (set on the GPU machine; BUNDLE/out elsewhere)
OUT=${OUT:-$bundle/out}
work=$bundle/run
LOGS=$work/logs
trap 'rm -rf "$work"' EXIT
timeout_s=${MUTANT_TIMEOUT:-300}
# which tests: the GPU-tagged ones; MUTATION_SELECT overrides it (e.g. for a dry run of this script
# on a machine without a GPU: MUTATION_SELECT="--select-class org.loramerge.quant.QuantStateTest")
read -r -a select <<< "${MUTATION_SELECT:---scan-class-path --include-tag gpu}"
rm -rf "$LOGS"
mkdir -p "$OUT" "$LOGS"
if [ $# -gt 0 ]; then ids=("$@"); else mapfile -t ids < "$bundle/ids.txt"; fi
console=$(ls "$bundle"/junit-platform-console-standalone-*.jar | head -n 1)

if [ ! -x "$work/jre/bin/java" ]; then
  tar xzf "$bundle/jre.tgz" -C "$work"
  "$work/jre/bin/java" -Xshare:dump > /dev/null 2>&1 || true  # the class-data archive jlink leaves out: faster JVM starts
fi
export JAVA_HOME=$work/jre PATH=$work/jre/bin:$PATH
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/card.txt" || echo "no GPU" > "$OUT/card.txt"

# run NAME [CLASSES_DIR]: the GPU-tagged tests; sets rc, secs, counts
run() {
  local name=$1 extra=${2:-} cp="$bundle/loramerge.jar:$bundle/loramerge-tests.jar"
  [ -n "$extra" ] && cp="$extra:$cp"
  rm -rf "$LOGS/reports-$name"
  local t0=$SECONDS
  timeout -k 10 "$timeout_s" java -jar "$console" execute --class-path "$cp" "${select[@]}" \
    --fail-if-no-tests --disable-banner --details=summary --reports-dir "$LOGS/reports-$name" > "$LOGS/$name.log" 2>&1
  rc=$?
  secs=$((SECONDS - t0))
  counts=$(grep -E '^\[ +[0-9]+ tests (successful|failed|skipped|aborted) +\]' "$LOGS/$name.log" | tr -s ' []' ' ' | tr '\n' ';')
}

# the first failed or errored test case in the XML report, as Class.method
killer() {
  python3 - "$LOGS/reports-$1" <<'EOF' 2>/dev/null || echo "?"
import os, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:
    if n.endswith(".xml"):
        for c in ET.parse(os.path.join(d, n)).iter("testcase"):
            if c.find("failure") is not None or c.find("error") is not None:
                print(c.get("classname", "").rsplit(".", 1)[-1] + "." + c.get("name", "?").split("(")[0])
                sys.exit(0)
print("-")
EOF
}

successful() { echo "$counts" | grep -oE '[0-9]+ tests successful' | grep -oE '^[0-9]+' || echo 0; }

if [ "${SKIP_BASELINE:-0}" != 1 ]; then
  run baseline
  if [ "$rc" -ne 0 ] || [ "$(successful)" -eq 0 ]; then
    tail -n 30 "$LOGS/baseline.log"
    echo "the unmutated GPU tests did not pass (exit $rc; $counts): no verdict is possible"
    tar czf "$OUT/gpu-mutant-logs.tgz" -C "$work" logs
    exit 1
  fi
  echo "baseline: GPU tests green in ${secs} s ($counts)"
fi

table=("| id | package | description | verdict | killing test | seconds |" "| --- | --- | --- | --- | --- | --- |")
killed=0
counted=0
for id in "${ids[@]}"; do
  dir="$bundle/mutants/$id/classes"
  if [ ! -d "$dir" ]; then echo "$id: not in $bundle"; continue; fi
  run "$id" "$dir"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    verdict=killed; who="(timeout after ${timeout_s} s)"
  elif [ "$rc" -ne 0 ]; then
    verdict=killed; who=$(killer "$id")
  elif [ "$(successful)" -eq 0 ]; then
    verdict=no-gpu; who="-"
  else
    verdict=survived; who="-"
  fi
  if [ "$verdict" != no-gpu ]; then
    counted=$((counted + 1))
    [ "$verdict" = killed ] && killed=$((killed + 1))
  fi
  meta=$(python3 -c "import json,sys; m=[x for x in json.load(open(sys.argv[1]))['mutants'] if x['id']==sys.argv[2]][0]; print(m['package']+'\t'+m['description'].replace('|','/'))" "$bundle/mutants.json" "$id")
  table+=("| $id | ${meta%%$'\t'*} | ${meta#*$'\t'} | $verdict | $who | $secs |")
  echo "$id: $verdict $who (${secs} s; $counts)"
done

{
  echo "## Hand-planted GPU mutants"
  echo
  echo "GPU-tagged tests on $(cat "$OUT/card.txt"), bundle of $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['head'][:7])" "$bundle/mutants.json")."
  echo
  echo "**Kill ratio: $killed/$counted**"
  echo
  printf '%s\n' "${table[@]}"
} > "$OUT/gpu-mutants.md"
tar czf "$OUT/gpu-mutant-logs.tgz" -C "$work" logs
echo
cat "$OUT/gpu-mutants.md"
