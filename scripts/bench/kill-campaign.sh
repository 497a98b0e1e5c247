#!/usr/bin/env bash
# Faults at scale: SIGKILL a CPU merge of a ~1 GB model at random points, and check what is left.
#
#   scripts/bench/kill-campaign.sh [-n RUNS] [-s SHAPE] [-w WORKDIR] [-S SEED]
#     -n  kills (default 20)         -s  make_synthetic.py shape (default 1gb)
#     -w  work folder (default /tmp/loramerge-kill; the model is kept there between campaigns)
#     -S  seed of the kill times (default: the time)
#
# Needs the jar (mvn -q package -DskipTests; built here when missing) and, for the model, a Python
# with torch (PYTHON, default python3). Each round:
#   1. starts `loramerge merge --device cpu` into WORKDIR/out and kills it with SIGKILL after a random
#      time from 0 to 1.1 times a full merge (the last one's time: the reference merge's, then each
#      round's second merge's, which follows the machine's load), noting the phase the kill landed in
#      from what is on disk: startup (nothing yet: JVM start, reading, planning), locking (its owner
#      record, no partial folder yet), writing (a partial folder), committed (the output in place, the
#      process not yet gone), or exited (it had finished);
#   2. checks that no --out exists, unless the kill came after the commit, when the output must be
#      the complete one (identical to the reference merge);
#   3. runs the same merge again (with --overwrite, which a committed output needs), which must
#      succeed, write the reference output byte for byte, and leave no .out.loramerge-partial-* or
#      -old-* folder and no written -lock-* record behind: it cleans up after the dead merge
#      (pipeline/AtomicOutput). An empty owner record younger than a minute is the one exception
#      (a merge killed between creating and writing it looks like one that is about to lock it,
#      AtomicOutput.UNWRITTEN_RECORD_GRACE); after the rounds, a merge run past that minute must
#      remove every such record.
# Prints one line a round and a summary; exits 1 when any check failed. The reference merge's time
# and output hash are kept in the model folder for the jar that made them.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=20
shape=1gb
work=/tmp/loramerge-kill
seed=$(date +%s)
while getopts "n:s:w:S:h" opt; do
    case $opt in
        n) runs=$OPTARG ;;
        s) shape=$OPTARG ;;
        w) work=$OPTARG ;;
        S) seed=$OPTARG ;;
        *) sed -n '2,27p' "$0"; exit 2 ;;
    esac
done
[[ $runs =~ ^[0-9]+$ && $seed =~ ^[0-9]+$ ]] || { echo "kill-campaign: -n and -S take whole numbers" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
RANDOM=$((seed % 32768))
if [ ! -f target/loramerge.jar ]; then
    mvn -B -ntp -q package -DskipTests
fi
mkdir -p "$work"
model="$work/model-$shape"
if [ ! -f "$model/.complete" ]; then
    rm -rf "$model"
    "$PYTHON" scripts/bench/make_synthetic.py --out "$model" --shape "$shape" >&2
    touch "$model/.complete"
fi
out="$work/out"
merge=(./loramerge merge --base "$model/base" --adapter "$model/adapter" --out "$out" --device cpu --quiet)

leftovers() {  # the hidden folders and lock records of merges into $out
    find "$work" -maxdepth 1 -name ".$(basename "$out").loramerge-*" -printf '%f\n' | sort
}
tree_hash() {
    (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}
phase_now() {  # what is on disk while the merge runs
    if [ -d "$out" ]; then
        echo committed
    elif [ -n "$(find "$work" -maxdepth 1 -name ".$(basename "$out").loramerge-partial-*" -print -quit)" ]; then
        echo writing
    elif [ -n "$(find "$work" -maxdepth 1 -name ".$(basename "$out").loramerge-lock-*" -print -quit)" ]; then
        echo locking
    else
        echo startup
    fi
}
stale_now() {  # what a finished merge must not leave: partial and old folders, written owner records
    find "$work" -maxdepth 1 -name ".$(basename "$out").loramerge-*" \( -type d -o -size +0 \) -printf '%f\n' | sort
}

rm -rf "$out"
for f in $(leftovers); do rm -rf "${work:?}/$f"; done
jar_hash=$(sha256sum target/loramerge.jar | cut -c1-16)
if [ -f "$model/.reference-$jar_hash" ]; then
    read -r full_ms reference <"$model/.reference-$jar_hash"
else
    start_ns=$(date +%s%N)
    "${merge[@]}"
    full_ms=$((($(date +%s%N) - start_ns) / 1000000))
    reference=$(tree_hash "$out")
    echo "$full_ms $reference" >"$model/.reference-$jar_hash"
fi
echo "kill-campaign: reference merge of $shape: $full_ms ms, output $reference; seed $seed"

declare -A phases=()
failures=0
young_records=0
for ((i = 1; i <= runs; i++)); do
    rm -rf "$out"
    delay_ms=$((RANDOM * 32768 + RANDOM))
    delay_ms=$((delay_ms % (full_ms * 11 / 10 + 1)))
    "${merge[@]}" >"$work/killed.log" 2>&1 &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    if kill -0 "$pid" 2>/dev/null; then
        phase=$(phase_now)
        kill -KILL "$pid" 2>/dev/null || true
    else
        phase=exited
    fi
    wait "$pid" 2>/dev/null && status=0 || status=$?
    problems=()
    if [ "$phase" = committed ] || [ "$phase" = exited ]; then
        if [ -d "$out" ] && [ "$(tree_hash "$out")" != "$reference" ]; then
            problems+=("a committed --out differs from the reference")
        elif [ ! -d "$out" ] && [ "$phase" = exited ]; then
            problems+=("the merge exited ($status) before the kill without an output")
        fi
    elif [ -e "$out" ]; then
        problems+=("--out exists after a kill in phase $phase")
    fi
    left=$(leftovers | tr '\n' ' ')
    start_ns=$(date +%s%N)
    if "${merge[@]}" --overwrite >"$work/rerun.log" 2>&1; then
        full_ms=$((($(date +%s%N) - start_ns) / 1000000))
        if [ "$(tree_hash "$out")" != "$reference" ]; then
            problems+=("the next merge's output differs from the reference")
        fi
    else
        problems+=("the next merge failed: $(tail -3 "$work/rerun.log" | tr '\n' ' ')")
    fi
    stale=$(stale_now | tr '\n' ' ')
    if [ -n "$stale" ]; then
        problems+=("left behind after the next merge: $stale")
    fi
    young=$(leftovers | tr '\n' ' ')
    [ -n "$young" ] && [ -z "$stale" ] && young_records=$((young_records + 1))
    phases[$phase]=$((${phases[$phase]:-0} + 1))
    if ((${#problems[@]} == 0)); then
        verdict=ok
    else
        verdict="FAILED: ${problems[*]}"
        failures=$((failures + 1))
    fi
    echo "kill-campaign: round $i: kill at $delay_ms ms in phase $phase (the dead merge left: ${left:-nothing}); $verdict"
done
summary=""
for p in startup locking writing committed exited; do
    summary+="$p ${phases[$p]:-0}, "
done
if [ -n "$(leftovers)" ]; then
    # the empty owner records of merges killed as they created them: the first merge after the grace removes them
    echo "kill-campaign: $young_records rounds left an empty owner record younger than a minute; one more merge after that minute:"
    sleep 61
    "${merge[@]}" --overwrite >"$work/rerun.log" 2>&1 || { echo "kill-campaign: FAILED: the last merge failed" >&2; failures=$((failures + 1)); }
    if [ -n "$(leftovers)" ]; then
        echo "kill-campaign: FAILED: still left behind: $(leftovers | tr '\n' ' ')" >&2
        failures=$((failures + 1))
    fi
fi
echo "kill-campaign: $runs kills (${summary%, }); $((runs - failures)) passed, $failures failed"
rm -rf "$out"
((failures == 0))
