#!/usr/bin/env bash
# Fails when a committed generated file differs from a fresh build of its sources:
#   native/{cublas12-imports.txt,cublas_forward_symbols.inc,libcublas.so.12.map}
#       from the jcublas-natives jar (checked when the jar is in ~/.m2),
#   src/main/resources/org/loramerge/kernels/*.fatbin                  from kernels/*.cu,
#   src/main/resources/org/loramerge/native/linux-x86_64/libcublas.so.12 from native/.
# Builds in a temporary directory; changes nothing. Fix: scripts/native/build-native.sh, commit.
# Usage: check-generated.sh [JAR]
set -euo pipefail
shopt -s nullglob

root=$(cd "$(dirname "$0")/../.." && pwd)
jar=${1:-${HOME:-~}/.m2/repository/org/jcuda/jcublas-natives/12.0.0/jcublas-natives-12.0.0-linux-x86_64.jar}
resources=src/main/resources/org/loramerge
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
stale=()
compared=0
compare() { # compare FRESH COMMITTED(relative to root)
    compared=$((compared + 1))
    if [[ ! -f $root/$2 ]]; then
        stale+=("$2 (missing)")
    elif ! cmp -s "$1" "$root/$2"; then
        stale+=("$2")
    fi
}

# 1. The forwarder's generated sources.
if [[ -f $jar ]]; then
    mkdir -p "$tmp/gen"
    "${PYTHON:-python3}" "$root/native/gen_cublas_forward.py" --jar "$jar" --out "$tmp/gen" >/dev/null
    for f in cublas12-imports.txt cublas_forward_symbols.inc libcublas.so.12.map; do
        compare "$tmp/gen/$f" "native/$f"
    done
else
    echo "check-generated: $jar not found; not checking native/*.inc against it"
fi

# 2. The build outputs.
if ! command -v nvcc >/dev/null && [[ ! -x ${CUDA_HOME:-/usr/local/cuda}/bin/nvcc ]]; then
    echo "check-generated: nvcc not found: install the CUDA 13.0 toolkit or set CUDA_HOME" >&2
    exit 2
fi
if ! env -u CFLAGS -u CPPFLAGS -u LDFLAGS -u NVCC_PREPEND_FLAGS -u NVCC_APPEND_FLAGS \
    cmake -S "$root" -B "$tmp/build" -DLORAMERGE_BUILD_TESTS=OFF >"$tmp/log" 2>&1 ||
   ! env -u NVCC_PREPEND_FLAGS -u NVCC_APPEND_FLAGS \
    cmake --build "$tmp/build" --target loramerge_native >>"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    echo "check-generated: the native build failed (log above)" >&2
    exit 2
fi
for fatbin in "$tmp"/build/kernels/*.fatbin; do
    compare "$fatbin" "$resources/kernels/$(basename "$fatbin")"
done
for committed in "$root/$resources"/kernels/*.fatbin; do
    [[ -f $tmp/build/kernels/$(basename "$committed") ]] ||
        stale+=("$resources/kernels/$(basename "$committed") (no longer built: delete it)")
done
compare "$tmp/build/native/libcublas.so.12" "$resources/native/linux-x86_64/libcublas.so.12"

if ((${#stale[@]} > 0)); then
    {
        echo "check-generated: ${#stale[@]} generated file(s) differ from a fresh build:"
        printf '  %s\n' "${stale[@]}"
        echo "Run scripts/native/build-native.sh and commit the result."
        echo "Toolchain here: $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*, V[0-9.]*' || true)," \
             "$(gcc --version | head -1)"
        forwarder=$root/$resources/native/linux-x86_64/libcublas.so.12
        if [[ -f $forwarder ]]; then
            echo "Committed forwarder made by: $(readelf -p .comment "$forwarder" | grep -o 'GCC.*' || true)"
        fi
        echo "(A different nvcc or gcc gives different bytes: build with the versions above.)"
    } >&2
    exit 1
fi
echo "check-generated: $compared generated files up to date"
