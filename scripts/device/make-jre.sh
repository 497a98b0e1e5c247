#!/usr/bin/env bash
# Packs a small Java 17 runtime for the GPU machine, which has CUDA but no Java (docs/GPU.md).
#
#   scripts/device/make-jre.sh [OUT_DIR [JAR...]]          default OUT_DIR: .device
#
# The runtime holds the modules that jdeps says the jars need, plus jdk.zipfs: the JARs given,
# or else target/loramerge-cli.jar and every jar already in OUT_DIR (gpu-run.sh pack puts the test
# jar, the JMH benchmarks and the JUnit launcher there first). EXTRA_MODULES=a,b adds modules.
# Writes OUT_DIR/jre.tgz, which unpacks to jre/. Carry OUT_DIR in the device call (.device
# is git-ignored) and, there:
#   tar xzf .device/jre.tgz -C /tmp && export JAVA_HOME=/tmp/jre PATH=/tmp/jre/bin:$PATH
# Needs a JDK 17 with jdeps and jlink: JDK17=/path/to/jdk, else JAVA_HOME, else the javac on PATH.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:-$root/.device}")
shift || true

jdk=${JDK17:-${JAVA_HOME:-}}
if [[ -z $jdk || ! -x $jdk/bin/jlink ]]; then
    javac=$(command -v javac || true)
    [[ -n $javac ]] || { echo "make-jre: no JDK found; set JDK17 to a Java 17 JDK" >&2; exit 2; }
    jdk=$(dirname "$(dirname "$(readlink -f "$javac")")")
fi
version=$("$jdk/bin/java" -version 2>&1 | head -1)
if [[ $version != *'"17'* ]]; then
    echo "make-jre: $jdk is not a Java 17 JDK ($version); set JDK17" >&2
    exit 2
fi

jars=("$@")
if ((${#jars[@]} == 0)); then
    [[ -f $root/target/loramerge-cli.jar ]] || { echo "make-jre: build target/loramerge-cli.jar first (mvn -q package -DskipTests)" >&2; exit 2; }
    jars=("$root/target/loramerge-cli.jar")
    shopt -s nullglob
    for j in "$out"/*.jar; do
        [[ $(basename "$j") == loramerge.jar ]] || jars+=("$j")
    done
    shopt -u nullglob
fi

# jdeps prints a set whose closure is complete (java.sql brings java.logging and java.xml along).
# It cannot see providers found through ServiceLoader: jdk.zipfs is one (without it the JUnit
# launcher finds no test in a jar).
modules=$("$jdk/bin/jdeps" --multi-release 17 --ignore-missing-deps --print-module-deps "${jars[@]}" | tail -n 1)
[[ $modules == java.base* ]] || { echo "make-jre: jdeps gave no module list: $modules" >&2; exit 2; }
modules=$modules,jdk.zipfs${EXTRA_MODULES:+,$EXTRA_MODULES}

mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --generate-cds-archive: the runtime's class-data archive (lib/server/classes.jsa), which a JDK
# ships and a bare jlink image lacks: without it every start parses the JDK's classes anew, and
# an application archive (-XX:SharedArchiveFile, see the ./loramerge launcher) needs it as its base
"$jdk/bin/jlink" --add-modules "$modules" --strip-debug --no-header-files --no-man-pages --compress=1 \
    --generate-cds-archive --output "$tmp/jre"
"$tmp/jre/bin/java" -version 2>/dev/null || { echo "make-jre: the runtime does not start" >&2; exit 1; }
tar czf "$out/jre.tgz" -C "$tmp" jre

if git -C "$root" rev-parse --git-dir >/dev/null 2>&1 && [[ $out == "$root"/* ]] \
    && ! git -C "$root" check-ignore -q "$out/jre.tgz"; then
    echo "make-jre: warning: $out is not git-ignored; do not commit jre.tgz" >&2
fi
echo "make-jre: wrote $out/jre.tgz ($(du -h "$out/jre.tgz" | cut -f1)), modules $modules"
echo "make-jre: from ${#jars[@]} jar(s): ${jars[*]##*/}"
