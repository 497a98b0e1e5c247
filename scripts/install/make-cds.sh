#!/usr/bin/env bash
# Makes the class-data archive (AppCDS) of a loramerge jar, so that a run starts faster: the JVM
# maps loramerge's classes (picocli, Jackson, the engines) already parsed and verified instead of
# reading them from the jar, about a quarter of a second less a run. The ./loramerge launcher uses
# JAR's archive (JAR's name with .jsa) when it is there; the JVM checks that it belongs to this jar
# and this Java and ignores it, silently, when not (after a rebuild, say: run this again).
#
#   scripts/install/make-cds.sh [JAR]        default target/loramerge-cli.jar
#
# The archive is what a merge of the shipped example (examples/tiny-llama, --device auto, with
# --json so that the report's writer is in it too) loads, recorded at its exit (-XX:ArchiveClassesAtExit, Java 17). Runs the java of JAVA_HOME, else of
# the PATH: the one the launcher will run. install.sh calls it for the jar it installs.
set -euo pipefail
case "${1:-}" in -h|--help) sed -n 2,12p "$0"; exit 0 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
jar=$(realpath -m "${1:-$root/target/loramerge-cli.jar}")
[[ -f $jar ]] || { echo "make-cds: $jar not found; build it first with: mvn -q package -DskipTests" >&2; exit 2; }
jsa=${jar%.jar}.jsa
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
tmp=$(mktemp -d)
# recorded beside the jar under another name, then renamed over the old one: a run never finds a
# half-written archive (the JVM would crash mapping it)
part=$jsa.part.$$
trap 'rm -rf "$tmp"; rm -f "$part"' EXIT
# the JVM writes its archive at exit; the warnings it prints about classes it cannot archive (old
# class files, proxies) are not ours to act on
if ! "$java" -XX:ArchiveClassesAtExit="$part" -Xlog:cds=off -Xlog:cds+dynamic=off -Xmx2g -jar "$jar" merge \
    --base "$root/examples/tiny-llama/base" --adapter "$root/examples/tiny-llama/adapter" --out "$tmp/merged" --quiet --json \
    > "$tmp/log" 2>&1 || [[ ! -s $part ]]; then
  cat "$tmp/log" >&2
  echo "make-cds: the training merge failed; no archive written" >&2
  exit 1
fi
mv -f "$part" "$jsa"
echo "make-cds: wrote $jsa ($(du -h "$jsa" | cut -f1))"
