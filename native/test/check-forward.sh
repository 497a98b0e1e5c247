#!/usr/bin/env bash
# Checks the libcublas.so.12 forwarder without a GPU (run by ctest, see CMakeLists.txt):
#   1. its ELF: SONAME, the version node, every JCublas import exported @@libcublas.so.12,
#      and no glibc symbol version newer than GLIBC_2.2.5;
#   2. calls forward into a fake libcublas.so.13 with arguments and results intact, and
#      functions the fake lacks, or all of them when there is no libcublas.so.13, return 15;
#   3. JCublas's own natives, from the jcublas-natives jar, load with RTLD_NOW against it,
#      both after a dlopen of the forwarder by full path (what System.load does) and
#      through LD_LIBRARY_PATH; and, as the control, fail without it or with a symlink.
# Usage: check-forward.sh FORWARDER FAKE_DIR FORWARD_TEST LOAD_TEST SYMBOL_COUNT [JAR]
set -euo pipefail

forwarder=$1 fake_dir=$2 forward_test=$3 load_test=$4 count=$5
jar=${6:-${HOME:-~}/.m2/repository/org/jcuda/jcublas-natives/12.0.0/jcublas-natives-12.0.0-linux-x86_64.jar}
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "check-forward: ok: $*"; }
bad() { failed=$((failed + 1)); echo "check-forward: FAILED: $*" >&2; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
# The forwarder's fallbacks look at these variables; keep the tests independent of them.
unset CUDA_HOME CUDA_PATH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. The ELF.
check "SONAME is libcublas.so.12" \
    grep -q 'Library soname: \[libcublas.so.12\]' <(readelf -d "$forwarder")
check "defines version node libcublas.so.12" \
    grep -qE 'Flags: none +Index: 2 +Cnt: 1 +Name: libcublas.so.12' <(readelf -V "$forwarder")
exported=$(nm -D --defined-only "$forwarder" | grep -c '@@libcublas.so.12$' || true)
check "exports $count + 2 symbols @@libcublas.so.12 (got $exported)" \
    test "$exported" -eq $((count + 2))
check "needs no glibc version newer than GLIBC_2.2.5" \
    test -z "$(readelf -V "$forwarder" | grep -oE 'GLIBC_[0-9.]+' | grep -v '^GLIBC_2\.2\.5$' || true)"
check "has no build id" \
    test -z "$(readelf -n "$forwarder" | grep -i 'build id' || true)"

# 2. Calls, with the forwarder found as libcublas.so.12 next to the test program.
mkdir -p "$tmp/fwd"
cp "$forwarder" "$tmp/fwd/libcublas.so.12"
check "calls forward to the fake libcublas.so.13" \
    env LD_LIBRARY_PATH="$tmp/fwd:$fake_dir" "$forward_test" present "$count"
if ls /usr/local/cuda/lib64/libcublas.so.13 /usr/local/cuda/targets/x86_64-linux/lib/libcublas.so.13 \
    >/dev/null 2>&1 || ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13 '; then
    echo "check-forward: skipped: a real libcublas.so.13 is installed, so 'absent' cannot be tested"
else
    check "without libcublas.so.13 every call returns 15" \
        env LD_LIBRARY_PATH="$tmp/fwd" "$forward_test" absent "$count"
fi

# 3. JCublas's natives.
if [[ ! -f $jar ]]; then
    echo "check-forward: skipped: $jar not found (run mvn dependency:resolve)"
else
    mkdir -p "$tmp/jc" "$tmp/both" "$tmp/symlink"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$jar" "$tmp/jc"
    libs=("$tmp"/jc/lib/*.so)
    cp "$forwarder" "$tmp/both/libcublas.so.12"
    cp "$fake_dir/libcublas.so.13" "$tmp/both/"
    check "JCublas natives load after dlopen(forwarder by full path)" \
        env LD_LIBRARY_PATH="$fake_dir" "$load_test" "$forwarder" "${libs[@]}"
    check "JCublas natives load with the forwarder on LD_LIBRARY_PATH" \
        env LD_LIBRARY_PATH="$tmp/both" "$load_test" - "${libs[@]}"
    # Every cuBLAS import of libJCublas2 binds to the forwarder, none elsewhere.
    jc2=$(ls "$tmp"/jc/lib/libJCublas2-*.so)
    LD_DEBUG=bindings LD_DEBUG_OUTPUT="$tmp/bind" LD_LIBRARY_PATH="$fake_dir" \
        "$load_test" "$forwarder" "$jc2" >/dev/null 2>&1 || true
    bound=$(cat "$tmp"/bind.* | grep "binding file $jc2 " | grep -c "to $forwarder \[0\]: normal symbol .*\[libcublas.so.12\]" || true)
    imports=$(nm -D --undefined-only "$jc2" | grep -c '@libcublas.so.12$' || true)
    check "all $imports cuBLAS imports of libJCublas2 bind to the forwarder (got $bound)" \
        test "$bound" -eq "$imports" -a "$imports" -gt 0
    # Controls: the failures the forwarder exists to avoid.
    ln -s "$fake_dir/libcublas.so.13" "$tmp/symlink/libcublas.so.12"
    fails_with() { # fails_with MESSAGE LD_LIBRARY_PATH: loading libJCublas2 fails, saying MESSAGE
        local out
        if out=$(LD_LIBRARY_PATH=$2 "$load_test" - "$jc2" 2>&1); then return 1; fi
        grep -q "$1" <<<"$out"
    }
    check "control: without the forwarder libJCublas2 does not load" \
        fails_with "libcublas.so.12: cannot open" "$fake_dir"
    check "control: a symlink libcublas.so.12 -> libcublas.so.13 fails on the symbol version" \
        fails_with "version .libcublas.so.12. not found" "$tmp/symlink"
fi

echo "check-forward: $passed passed, $failed failed"
test "$failed" -eq 0
