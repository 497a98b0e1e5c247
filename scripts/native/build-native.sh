#!/usr/bin/env bash
# Rebuilds the committed native outputs and copies them into the resources:
#   src/main/resources/org/loramerge/kernels/{round,nf4,combine,extract,quant}.fatbin
#   src/main/resources/org/loramerge/native/linux-x86_64/libcublas.so.12
# First regenerates the forwarder's symbol list and version script (native/) from the
# jcublas-natives jar, when it is in ~/.m2. Commit what changes; scripts/native/check-generated.sh
# (run by CI) fails while the committed files differ from a fresh build.
# Needs gcc, cmake >= 3.20, nvcc (CUDA 13.0), Python 3 (PYTHON, default python3) and nm. Usage: build-native.sh [JAR]
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
jar=${1:-${HOME:-~}/.m2/repository/org/jcuda/jcublas-natives/12.0.0/jcublas-natives-12.0.0-linux-x86_64.jar}
resources=$root/src/main/resources/org/loramerge
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT

if [[ -f $jar ]]; then
    "${PYTHON:-python3}" "$root/native/gen_cublas_forward.py" --jar "$jar"
else
    echo "build-native: $jar not found (mvn dependency:resolve fetches it);" \
         "keeping the committed native/cublas_forward_symbols.inc"
fi

# Flags from the environment would change the bytes; the build sets its own.
env -u CFLAGS -u CPPFLAGS -u LDFLAGS -u NVCC_PREPEND_FLAGS -u NVCC_APPEND_FLAGS \
    cmake -S "$root" -B "$build" -DLORAMERGE_BUILD_TESTS=OFF >/dev/null
env -u NVCC_PREPEND_FLAGS -u NVCC_APPEND_FLAGS cmake --build "$build" --target loramerge_native

mkdir -p "$resources/kernels" "$resources/native/linux-x86_64"
install -m 0644 "$build"/kernels/*.fatbin "$resources/kernels/"
install -m 0644 "$build/native/libcublas.so.12" "$resources/native/linux-x86_64/libcublas.so.12"
echo "build-native: updated"
(cd "$root" && ls -l src/main/resources/org/loramerge/kernels/*.fatbin \
    src/main/resources/org/loramerge/native/linux-x86_64/libcublas.so.12)
