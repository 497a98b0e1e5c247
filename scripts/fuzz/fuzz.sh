#!/usr/bin/env bash
# Runs the fuzz targets of scripts/fuzz/targets.txt in fuzzing mode (Jazzer, coverage-guided), one
# after another, each for a bounded time, on test classes that `mvn test` (or test-compile) built.
#
#   scripts/fuzz/fuzz.sh [-t SECONDS] [-k FINDINGS] [-l LOGDIR] [PATTERN]
#     -t  seconds per target (default 30)
#     -k  keep going until this many distinct findings per target (default 1: stop at the first)
#     -l  keep each target's output in LOGDIR/<method>.log (default: a temporary folder)
#     PATTERN  run only the targets whose line contains it
#
# Per-input limit: 10 s (the targets' @Timeout, which Jazzer hands to libFuzzer as -timeout; JUnit's own
# timeout is switched off here, as it would time the whole fuzzing run). A finding is written as
# crash-*/timeout-* into the target's inputs folder under src/test/resources (where mvn test then
# replays it), and the run fails. Inputs that gave new coverage go to .cifuzz-corpus/ (ignored by git).
# The last line per target is libFuzzer's: executions (#N), edges (cov), features (ft), corpus.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=30
keep=1
logdir=
while getopts "t:k:l:h" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        k) keep=$OPTARG ;;
        l) logdir=$OPTARG ;;
        *) sed -n '2,16p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
pattern=${1:-}
[[ $seconds =~ ^[0-9]+$ && $keep =~ ^[0-9]+$ ]] || { echo "fuzz.sh: -t and -k take whole numbers" >&2; exit 2; }
if [ -z "$logdir" ]; then
    logdir=$(mktemp -d)
    trap 'rm -rf "$logdir"' EXIT
fi
mkdir -p "$logdir"
failed=0
ran=0
while read -r target; do
    [[ -z $target || $target == \#* || $target != *"$pattern"* ]] && continue
    method=${target#*#}
    log="$logdir/$method.log"
    start=$SECONDS
    # surefire:test alone: no recompilation; JAZZER_FUZZ selects fuzzing mode
    if JAZZER_FUZZ=1 mvn -B -ntp -o -q surefire:test -Dtest="$target" -Dsurefire.failIfNoSpecifiedTests=false \
        -Djazzer.max_duration="${seconds}s" -Djazzer.keep_going="$keep" \
        -Djunit.jupiter.execution.timeout.mode=disabled >"$log" 2>&1; then
        verdict=passed
    else
        verdict=FAILED
        failed=$((failed + 1))
    fi
    ran=$((ran + 1))
    done_line=$(grep -aE '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    echo "fuzz: $verdict ${target##*.} in $((SECONDS - start)) s: ${done_line:-no libFuzzer summary}"
    if [ "$verdict" = FAILED ]; then
        grep -aE '== Java Exception|Caused by|^\s+at org\.loramerge|crash-|timeout-|artifact_prefix|Test unit written' "$log" | head -40 >&2 || true
        tail -20 "$log" >&2
    fi
done <scripts/fuzz/targets.txt
if ((ran == 0)); then
    echo "fuzz: no target matches '$pattern'" >&2
    exit 2
fi
if ((failed > 0)); then
    echo "fuzz: $failed of $ran targets found a bug; the inputs are in src/test/resources/org/loramerge/*/*Inputs/ (mvn test replays them)" >&2
    exit 1
fi
echo "fuzz: $ran targets, no findings"
